"""``index reembed``: every live item embedded again with another checkpoint, in place: ids, paths and exclusions
kept, vectors, tags and thumbnails new.

The order of commits, and what a kill at any moment leaves (a rerun with the same checkpoint continues):

1. plan: part plans for the live items (files by id, in parts of the index's part size; one part per shard), then the
   manifest's ``reembed`` record (the new model, the first new part, how many);
2. embed: the new parts are written as any part is (embeddings, thumbnails, metadata, ``done``); the index still
   searches the old vectors with the old model;
3. switch the catalog, in one transaction: each live item whose bytes were read again (same path and sha256) points
   at its new row and takes its new tags; a live item whose file changed or is gone since it was indexed is flagged
   deleted (``index add`` takes the file in again); the catalog records the new checkpoint's sha256;
4. a new main index over the new vectors, then the manifest names the new model and that index at once (``serve``
   answers 503 between 3 and 4, and loads the new model once 4 is written); the old parts' vectors, metadata and
   thumbnails are deleted last.
"""
from __future__ import annotations

import json
import logging
from typing import Dict

from ..errors import ConfigError
from . import parts
from .catalog import Catalog
from .collection import JobOptions, changing, drop_stale_index, new_main_index, run_parts
from .layout import Layout, kill_point, write_json
from .names import from_db, from_parts, to_db

log = logging.getLogger(__name__)
MODEL_KEYS = ("model", "pretrained", "checkpoint_sha256", "dim", "random_weights_seed")


def _plan(layout: Layout, catalog: Catalog, manifest: Dict, model_info: Dict, part_size: int) -> Dict:
    rows = catalog._all("SELECT id, path, source FROM items WHERE deleted = 0 ORDER BY id")
    files = [from_db(r[1]) for r in rows if not r[2]]
    shards = list(dict.fromkeys(r[2] for r in rows if r[2]))
    known = catalog.known_shards()
    plans = [{"files": files[s:s + part_size]} for s in range(0, len(files), part_size)]
    plans += [{"shard": u, "identity": known.get(u, u)} for u in shards]
    first = manifest["planned"]
    for j, plan in enumerate(plans):
        write_json(layout.plan(first + j), plan)
    return {**{k: model_info.get(k) for k in MODEL_KEYS}, "first": first, "count": len(plans)}


def _switch(layout: Layout, catalog: Catalog, pending: Dict) -> Dict[str, int]:
    """Step 3: one transaction; returns how many items were re-embedded and how many removed."""
    live = {}
    for item_id, path, sha in catalog._all("SELECT id, path, sha256 FROM items WHERE deleted = 0"):
        live[(to_db_key(path), sha)] = item_id
    moved, counts = set(), {}
    with catalog.lock:
        db = catalog.db
        db.execute("BEGIN IMMEDIATE")
        try:
            for i in range(pending["first"], pending["first"] + pending["count"]):
                meta = parts.read_metadata(layout, i)
                n = len(meta["image_path"])
                raw = meta.get("image_path_bytes") or [None] * n
                kept = 0
                for row in range(n):
                    path = from_parts(meta["image_path"][row], raw[row])
                    item_id = live.get((to_db_key(to_db(path)), meta["sha256"][row]))
                    if item_id is None or item_id in moved:
                        continue
                    moved.add(item_id)
                    kept += 1
                    tags = list(zip(meta["tags"][row], meta["tag_probs"][row]))
                    db.execute("UPDATE items SET part = ?, row = ?, tags = ?, thumb_offset = ?, thumb_size = ? "
                               "WHERE id = ?", (i, row, json.dumps([[t, round(float(p), 6)] for t, p in tags]),
                                                meta["thumb_offset"][row], meta["thumb_size"][row], item_id))
                    db.execute("DELETE FROM tags WHERE id = ?", (item_id,))
                    db.executemany("INSERT OR IGNORE INTO tags (tag, id, prob) VALUES (?, ?, ?)",
                                   [(t, item_id, float(p)) for t, p in tags])
                db.execute("INSERT OR REPLACE INTO parts (part, count) VALUES (?, ?)", (i, kept))
            stale = [i for i in live.values() if i not in moved]
            for s in range(0, len(stale), 500):
                chunk = stale[s:s + 500]
                db.execute(f"UPDATE items SET deleted = 1 WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('embedded_with', ?)",
                       (pending["checkpoint_sha256"] or "",))
            kill_point("reembed-commit")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    counts.update(reembedded=len(moved), removed=len(stale))
    return counts


def to_db_key(value) -> bytes:
    """A stored path as bytes, to compare a TEXT and a BLOB name alike."""
    import os

    return value if isinstance(value, bytes) else os.fsencode(value)


def reembed(root: str, embedder, model_info: Dict, opts: JobOptions) -> Dict:
    """Re-embed every live item of the index at ``root`` with ``embedder`` (the new model, ``model_info``: model,
    pretrained, checkpoint_sha256, dim, random_weights_seed); returns what it did."""
    with changing(root) as (layout, manifest, catalog):
        old_parts = sorted(catalog.ingested_parts())
        pending = manifest.get("reembed")
        if pending and pending["checkpoint_sha256"] != model_info["checkpoint_sha256"]:
            raise ConfigError(f"{root} is being re-embedded with another checkpoint ({pending['pretrained']}): "
                              "finish that first (rerun with its --pretrained)")
        if not pending:
            if manifest["checkpoint_sha256"] == model_info["checkpoint_sha256"]:
                raise ConfigError(f"{root} is already embedded with this checkpoint")
            pending = manifest["reembed"] = _plan(layout, catalog, manifest, model_info,
                                                  manifest.get("part_size", opts.part_size))
            layout.write_manifest(manifest, point="reembed-plan")
        else:
            old_parts = [i for i in old_parts if i < pending["first"]]
        new = list(range(pending["first"], pending["first"] + pending["count"]))
        counts = {}
        if catalog.get_meta("embedded_with") != pending["checkpoint_sha256"]:
            opts.on_total and opts.on_total(None)
            run_parts(layout, new, embedder, opts)
            counts = _switch(layout, catalog, pending)
        # step 4: the new main index, then the manifest names it and the new model at once
        budget = manifest.get("index", {}).get("max_index_memory") or opts.max_index_memory
        info = new_main_index(layout, catalog, manifest, budget, dim=pending["dim"], reuse=False)
        manifest.update({k: pending[k] for k in MODEL_KEYS if k in pending})
        if pending.get("random_weights_seed") is None:
            manifest.pop("random_weights_seed", None)
        manifest["planned"] = pending["first"] + pending["count"]
        manifest["parts"] = {str(i): parts.read_done(layout, i)["count"] for i in sorted(catalog.ingested_parts())}
        manifest["index"] = info
        del manifest["reembed"]
        layout.write_manifest(manifest, point="reembed-manifest")
        drop_stale_index(layout, info)
        for i in old_parts:  # their items all point at the new parts now
            for f in (layout.emb(i), layout.meta(i), layout.thumbs(i)):
                f.unlink(missing_ok=True)
        return {**counts, "live": catalog.live_count(), "index": manifest["index"]}

