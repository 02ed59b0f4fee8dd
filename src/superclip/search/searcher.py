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
from .catalog import Catalog
from .collection import live_vectors
from .layout import Layout
from .names import display
from .vectors import reader as vector_reader

log = logging.getLogger(__name__)


class Unavailable(Exception):
    """The index cannot answer now: its folder is gone, or a re-embedding is being committed (a 503)."""


# A tag filter leaving at most this many items is answered by an exact scan of their stored vectors (read by
# location, a few milliseconds); a graph or IVF search would mostly visit items the filter drops.
EXACT_FILTER_MAX = 4096


class _State:
    """What one reload loaded: the main index, the additions (exact), the deleted ids and their selector."""

    def __init__(self, key, main, delta, deleted: np.ndarray):
        self.key, self.main, self.delta, self.deleted = key, main, delta, deleted
        self.banned = faiss_index.selector(None, deleted)


class Searcher:
    """``mapped``: re-ranking and stored vectors gathered from the parts mapped side by side (vectors.reader: ~3x
    faster re-ranking; the pages read then count in the process's resident memory), else read one ``pread`` a row."""

    def __init__(self, root: str, mapped: bool = False):
        self.layout, self.mapped = Layout(root), mapped
        self.manifest = self.layout.read_manifest()
        self.catalog = Catalog(self.layout.catalog, readonly=True)
        self._catalog_id = self._file_id(self.layout.catalog)
        self.reader = vector_reader(self.layout, mapped=self.mapped)
        self.lock = threading.Lock()  # one reload at a time; searches read ``self.state`` and never wait
        self.state: Optional[_State] = None
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
        # O(1) on every request: the manifest's stat, the catalog file's identity and SQLite's data_version (which
        # changes whenever another connection commits)
        try:
            st = os.stat(self.layout.manifest)
            catalog_id = self._file_id(self.layout.catalog)
        except FileNotFoundError:
            raise self._gone() from None
        if catalog_id != self._catalog_id:  # another folder in its place (rebuilt): its own catalog and parts
            with self.lock:
                if catalog_id != self._catalog_id:
                    self.catalog.close()
                    self.catalog = Catalog(self.layout.catalog, readonly=True)
                    # the old reader's files close when no search holds it
                    self.reader = vector_reader(self.layout, mapped=self.mapped)
                    self._catalog_id = catalog_id
        with self.catalog.lock:
            version = self.catalog.db.execute("PRAGMA data_version").fetchone()[0]
        return st.st_mtime_ns, st.st_ino, st.st_size, catalog_id, version

    def reload_if_changed(self) -> None:
        """Reload what changed since the last request; :class:`Unavailable` when the folder is gone, or while a
        re-embedding is committed (the catalog holds the new vectors, the manifest does not name the new model
        yet)."""
        if self._current_stamp() == self._stamp:
            return
        with self.lock:
            stamp = self._current_stamp()
            if stamp == self._stamp:
                return
            try:
                manifest = self.layout.read_manifest()
                pending = manifest.get("reembed")
                if pending and self.catalog.get_meta("embedded_with") == pending["checkpoint_sha256"]:
                    raise Unavailable(f"{self.layout.root} is being re-embedded with another checkpoint: retry in a "
                                      "moment")
                info = manifest.get("index")
                old = self.state
                key = (self._catalog_id, info["file"], info["generation"]) if info else None
                if old is not None and old.key == key:
                    main = old.main  # a removal or an addition: the main index is unchanged
                else:
                    main = faiss_index.load(self.layout.root, info, self.reader) if info else None
                covered = set(info["parts"]) if info else set()
                ingested = set(self.catalog.ingested_parts())
                ids, vecs = live_vectors(self.layout, self.catalog, sorted(ingested - covered))
            except (FileNotFoundError, ConfigError):
                raise self._gone() from None
            self.manifest = manifest
            delta = faiss_index.flat_index(vecs if len(ids) else np.zeros((0, self.dim), np.float32), ids)
            deleted = np.asarray(sorted(self.catalog.deleted_ids()), dtype=np.int64)
            self.state = _State(key, main, delta, deleted)
            self._stamp = stamp
            log.info("loaded %s: main %s, %d additions, %d deleted", self.layout.root,
                     main.ntotal if main is not None else 0, delta.ntotal, len(deleted))

    @property
    def main(self):
        return self.state.main

    @property
    def delta(self):
        return self.state.delta

    @property
    def deleted(self) -> np.ndarray:
        return self.state.deleted

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
        return self.reader(np.asarray([(item["part"] << 32) | item["row"]]))[0]

    def search(self, query: np.ndarray, k: int, tags: Sequence[str] = (), exclude: Sequence[int] = (),
               reload: bool = True) -> List[Tuple[int, float]]:
        """The ``k`` best (id, score) for a (D,) query, among live items carrying every tag in ``tags``;
        ``reload=False``: the caller has just called :meth:`reload_if_changed` (in the same request)."""
        if reload:
            self.reload_if_changed()
        st = self.state
        q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        banned = np.union1d(st.deleted, np.asarray(list(exclude), dtype=np.int64)) if len(exclude) else st.deleted
        scale = {}
        if tags:
            allowed = np.setdiff1d(np.asarray(sorted(self.catalog.ids_with_tags(tags)), dtype=np.int64), banned)
            if not len(allowed):
                return []
            approximate = st.main is not None and st.main.kind not in ("flat",)
            if approximate and len(allowed) <= EXACT_FILTER_MAX:
                return self._exact_among(allowed, q, k)
            sel = faiss_index.selector(allowed)
            if approximate:  # a filter keeping a share f of the items: about 1/f as many visited for k of them
                scale = st.main.widened(min(16.0, st.main.ntotal / len(allowed)))
        else:
            sel = st.banned if not len(exclude) else faiss_index.selector(None, banned)
        hits: Dict[int, float] = {}
        for idx, extra in ((st.main, scale), (st.delta, {})):
            if idx is None or idx.ntotal == 0:
                continue
            scores, ids = idx.search(q, k, sel, **extra)
            for s, i in zip(scores[0].tolist(), ids[0].tolist()):
                if i >= 0:
                    hits[i] = max(s, hits.get(i, -np.inf))
        return sorted(hits.items(), key=lambda x: (-x[1], x[0]))[:k]

    def _exact_among(self, ids: np.ndarray, q: np.ndarray, k: int) -> List[Tuple[int, float]]:
        items = self.catalog.items(ids.tolist())
        ids = np.asarray(sorted(items), dtype=np.int64)
        vectors = self.reader(np.asarray([(items[i]["part"] << 32) | items[i]["row"] for i in ids.tolist()],
                                         dtype=np.int64))
        return sorted(faiss_index.exact_among(vectors, ids, q, k), key=lambda x: (-x[1], x[0]))

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
        main_ids = self.main.ids() if self.main is not None else np.zeros(0, np.int64)
        delta_ids = self.delta.ids()
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
        self.reader.close()


def item_name(item: Dict) -> str:
    """What a result card shows: a file's name, a shard sample's key (its path is ``URL#KEY``)."""
    if item["source"]:
        return display(item["path"][len(item["source"]) + 1:])
    return display(os.path.basename(item["path"]))
