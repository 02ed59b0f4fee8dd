"""Searching an index folder: the main faiss index, plus the ingested parts it does not cover yet (searched exactly),
minus deleted items; results come back with their catalog metadata. Reloads itself when the folder changes
(another command added, removed or optimized)."""
from __future__ import annotations

import logging
import os
import threading
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConfigError
from . import index as faiss_index
from . import parts
from .catalog import Catalog
from .collection import live_vectors
from .layout import Layout
from .names import display

log = logging.getLogger(__name__)


class Unavailable(Exception):
    """The index cannot answer now: its folder is gone, or a re-embedding is being committed (a 503)."""


class Searcher:
    def __init__(self, root: str):
        self.layout = Layout(root)
        self.manifest = self.layout.read_manifest()
        self.catalog = Catalog(self.layout.catalog, readonly=True)
        self._catalog_id = self._file_id(self.layout.catalog)
        self.lock = threading.Lock()
        self._stamp = None
        self.reload_if_changed()

    @staticmethod
    def _file_id(path) -> Tuple[int, int]:
        st = os.stat(path)
        return st.st_dev, st.st_ino

    def _gone(self) -> Unavailable:
        return Unavailable(f"the index folder {self.layout.root} is gone (deleted or moved): nothing can be served "
                           "from it")

    def _current_stamp(self) -> Tuple:
        try:
            manifest_time = os.stat(self.layout.manifest).st_mtime_ns
            catalog_id = self._file_id(self.layout.catalog)
        except FileNotFoundError:
            raise self._gone() from None
        if catalog_id != self._catalog_id:  # another folder in its place (rebuilt): its own catalog
            with self.lock:
                self.catalog.close()
                self.catalog = Catalog(self.layout.catalog, readonly=True)
                self._catalog_id = catalog_id
        with self.catalog.lock:
            version = self.catalog.db.execute("PRAGMA data_version").fetchone()[0]
            live = self.catalog.db.execute("SELECT COUNT(*), MAX(id) FROM items WHERE deleted = 0").fetchone()
        return manifest_time, catalog_id, version, live

    def reload_if_changed(self) -> None:
        """Reload what changed since the last request; :class:`Unavailable` when the folder is gone, or while a
        re-embedding is committed (the catalog holds the new vectors, the manifest does not name the new model
        yet)."""
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return
        with self.lock:
            try:
                manifest = self.layout.read_manifest()
                pending = manifest.get("reembed")
                if pending and self.catalog.get_meta("embedded_with") == pending["checkpoint_sha256"]:
                    raise Unavailable(f"{self.layout.root} is being re-embedded with another checkpoint: retry in a "
                                      "moment")
                info = manifest.get("index")
                main = faiss_index.deserialize((self.layout.root / info["file"]).read_bytes()) if info else None
                covered = set(info["parts"]) if info else set()
                ingested = set(self.catalog.ingested_parts())
                ids, vecs = live_vectors(self.layout, self.catalog, sorted(ingested - covered))
            except (FileNotFoundError, ConfigError):
                raise self._gone() from None
            self.manifest, self.main = manifest, main
            self.delta = faiss_index.flat_index(vecs if len(ids) else np.zeros((0, self.manifest["dim"]), np.float32),
                                                ids)
            self.deleted = np.asarray(sorted(self.catalog.deleted_ids()), dtype=np.int64)
            self._stamp = stamp
            log.info("loaded %s: main %s, %d additions, %d deleted", self.layout.root,
                     self.main.ntotal if self.main is not None else 0, self.delta.ntotal, len(self.deleted))

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def count(self) -> int:
        return self.catalog.live_count()

    def vector(self, item_id: int) -> Optional[np.ndarray]:
        """(D,) float32 stored embedding of a live item, None when there is no such item."""
        item = self.catalog.items([item_id]).get(item_id)
        if item is None or item["deleted"]:
            return None
        return np.asarray(parts.read_embeddings(self.layout, item["part"])[item["row"]], dtype=np.float32)

    def search(self, query: np.ndarray, k: int, tags: Sequence[str] = (),
               exclude: Sequence[int] = ()) -> List[Tuple[int, float]]:
        """The ``k`` best (id, score) for a (D,) query, among live items carrying every tag in ``tags``."""
        self.reload_if_changed()
        q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        banned = np.union1d(self.deleted, np.asarray(list(exclude), dtype=np.int64))
        allowed = None
        if tags:
            allowed = np.asarray(sorted(self.catalog.ids_with_tags(tags)), dtype=np.int64)
            if not len(allowed):
                return []
        sel = faiss_index.selector(allowed, banned)
        hits: Dict[int, float] = {}
        with self.lock:
            for idx in (self.main, self.delta):
                if idx is None or idx.ntotal == 0:
                    continue
                scores, ids = faiss_index.search(idx, q, k, sel)
                for s, i in zip(scores[0].tolist(), ids[0].tolist()):
                    if i >= 0:
                        hits[i] = max(s, hits.get(i, -np.inf))
        return sorted(hits.items(), key=lambda x: (-x[1], x[0]))[:k]

    def results(self, hits: List[Tuple[int, float]]) -> List[Dict]:
        """Hits with their catalog metadata: id, score, path, name (a file's name, a shard sample's key), tags
        [[tag, probability]]."""
        items = self.catalog.items([i for i, _ in hits])
        return [{"id": i, "score": round(float(s), 6), "path": display(items[i]["path"]), "name": item_name(items[i]),
                 "tags": items[i]["tags"]} for i, s in hits if i in items]

    def verify(self) -> Dict:
        """What the index and the catalog hold, and whether they agree: every live item searchable exactly once,
        no id the catalog does not know."""
        self.reload_if_changed()
        main_ids = (faiss_index_ids(self.main) if self.main is not None else np.zeros(0, np.int64))
        delta_ids = faiss_index_ids(self.delta)
        all_ids = np.concatenate([main_ids, delta_ids])
        searchable = np.setdiff1d(all_ids, self.deleted)
        live = {r[0] for r in self.catalog.locations()}
        known = {r[0] for r in self.catalog.locations(live=False)}
        return {"live": len(live), "searchable": int(len(searchable)),
                "duplicates": int(len(all_ids) - len(np.unique(all_ids))),
                "orphans": int(len(set(all_ids.tolist()) - known)),
                "agree": set(searchable.tolist()) == live and len(all_ids) == len(np.unique(all_ids))}

    def close(self) -> None:
        self.catalog.close()


def item_name(item: Dict) -> str:
    """What a result card shows: a file's name, a shard sample's key (its path is ``URL#KEY``)."""
    if item["source"]:
        return display(item["path"][len(item["source"]) + 1:])
    return display(os.path.basename(item["path"]))


def faiss_index_ids(index) -> np.ndarray:
    """Every id stored in a faiss index (IndexIDMap2 or IVF)."""
    import faiss

    if isinstance(index, faiss.IndexIDMap2) or hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    ivf = faiss.extract_index_ivf(index)
    invlists = ivf.invlists
    out = []
    for lst in range(ivf.nlist):
        n = invlists.list_size(lst)
        if n:
            out.append(faiss.rev_swig_ptr(invlists.get_ids(lst), n).copy())
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)
