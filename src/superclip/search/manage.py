"""``index remove | restore | excluded | stats | relink``: what an index leaves out, what it holds, and where its
checkpoint is.

A removal is remembered: ``remove`` records an exclusion (a path: a file, a folder, a shard, a shard sample; an id is
recorded as its item's path with the id) and flags the items it names deleted; later builds and adds never index an
excluded path again (they count it in their summary and list it in skipped.tsv). ``restore`` forgets an exclusion, so
that the next ``add`` looks at those files again (they come back with new ids: ids are never reused).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

from ..errors import ConfigError
from .catalog import Catalog
from .collection import changing, skipped_counts
from .layout import Layout
from .names import display, from_db
from .sources import checkpoint_hash, resolve, shard_identity, shard_urls, source_files

MAX_ID = (1 << 63) - 1


def _item_id(text: str) -> Optional[int]:
    return int(text) if text.isdigit() and 0 < int(text) <= MAX_ID else None


def remove(root: str, targets: List[str]) -> int:
    """Exclude the items named by id or by path (a file, every item under a folder, a shard, a shard sample
    ``URL#KEY``) and flag them deleted; returns how many live items that removed."""
    with changing(root) as (_, _, catalog):
        exclusions: List[Tuple[str, Optional[int]]] = []
        ids: List[int] = []
        for t in targets:
            if t.isdigit():
                item = catalog.items([_item_id(t)]).get(_item_id(t)) if _item_id(t) else None
                if item is None:
                    raise ConfigError(f"no item with id {t} in {root}")
                ids.append(item["id"])
                exclusions.append((item["path"], item["id"]))
                continue
            target = resolve(t)
            matched = catalog.ids_under(target)
            if not matched:
                raise ConfigError(f"no live item has the path {display(t)} (or lies under it) in {root}")
            ids += matched
            exclusions.append((target, None))
        return catalog.mark_deleted(ids, exclusions)


def restore(root: str, targets: List[str]) -> int:
    """Forget the exclusions named (by the path removed, or by the id removed); returns how many."""
    with changing(root) as (_, _, catalog):
        n = 0
        for t in targets:
            found = catalog.unexclude(item=_item_id(t)) if t.isdigit() else catalog.unexclude(target=resolve(t))
            if not found:
                raise ConfigError(f"{display(t)} is not excluded from {root} (superclip index excluded {root} lists "
                                  "what is)")
            n += found
        return n


def _open(root: str) -> Tuple[Layout, Dict, Catalog]:
    layout = Layout(root)
    manifest = layout.read_manifest()
    return layout, manifest, Catalog(layout.catalog, readonly=True)


def excluded(root: str) -> List[Tuple[str, Optional[int], float]]:
    """(target, id removed or None, when) of every exclusion."""
    _, _, catalog = _open(root)
    try:
        return catalog.exclusions()
    finally:
        catalog.close()


def _file_state(path: str, size: int, mtime: float, sha: str) -> str:
    """``same``, ``changed`` or ``gone``: a file against what the catalog recorded of it."""
    from .sources import file_sha256

    try:
        st = os.lstat(path)
    except OSError:
        return "gone"
    if os.path.islink(path) or os.path.realpath(path) != path:
        return "changed"
    if (st.st_size, st.st_mtime) == (size, mtime):
        return "same"
    try:
        return "same" if file_sha256(path) == sha else "changed"
    except OSError:
        return "changed"


def _count_of(source: str, catalog: Catalog, rows) -> Optional[int]:
    """Live items of one source; None when the source cannot be read any more (a CSV or folder gone)."""
    from ..evaluate.data import is_shard_pattern

    if is_shard_pattern(source):
        urls = set(shard_urls(source))
        return sum(1 for r in rows if r[2] in urls)
    if os.path.isdir(source):
        return len(catalog.ids_under(source))
    try:
        paths = {os.fsencode(p) for p in source_files(source)}
    except ConfigError:
        return None
    return sum(1 for r in rows if not r[2] and (r[1] if isinstance(r[1], bytes) else os.fsencode(r[1])) in paths)


def stats(root: str) -> Dict:
    """What an index holds: live and removed items, live items per source, files not indexed by reason, exclusions,
    and the items whose file (or local shard) changed or is gone since it was indexed."""
    layout, manifest, catalog = _open(root)
    try:
        rows = catalog._all("SELECT id, path, source, size, mtime, sha256 FROM items WHERE deleted = 0")
        per_source = {display(source): _count_of(source, catalog, rows) for source in manifest["sources"]}
        state = {"same": 0, "changed": 0, "gone": 0}
        shard_state: Dict[str, str] = {}
        known = catalog.known_shards()
        for _, path, source, size, mtime, sha in rows:
            if not source:
                state[_file_state(from_db(path), size, mtime, sha)] += 1
                continue
            if source not in shard_state:
                if source.startswith("pipe:"):
                    shard_state[source] = "same"  # a command's output cannot be checked without running it
                elif not os.path.isfile(source):
                    shard_state[source] = "gone"
                else:
                    shard_state[source] = "same" if shard_identity(source) == known.get(source) else "changed"
            state[shard_state[source]] += 1
        deleted = catalog._all("SELECT COUNT(*) FROM items WHERE deleted = 1")[0][0]
        return {"live": len(rows), "removed": deleted, "per_source": per_source, "skipped": skipped_counts(catalog),
                "exclusions": len(catalog.exclusions()), "unchanged": state["same"],
                "changed_since_indexed": state["changed"], "gone_since_indexed": state["gone"],
                "model": manifest.get("model"), "pretrained": manifest.get("pretrained"),
                "index": (manifest.get("index") or {}).get("kind")}
    finally:
        catalog.close()


def relink(root: str, pretrained: str) -> str:
    """Point the index at its checkpoint's new place (the same file: its sha256 is checked); returns the stored
    path."""
    path = resolve(pretrained)
    if not os.path.exists(path):
        raise ConfigError(f"--pretrained: {display(pretrained)} not found")
    with changing(root) as (layout, manifest, _):
        digest = checkpoint_hash(path)
        if digest != manifest.get("checkpoint_sha256"):
            raise ConfigError(f"{display(pretrained)} is not the checkpoint {root} was built with (sha256 differs): to "
                              f"use it, re-embed the index: superclip index reembed {root} --pretrained {pretrained}")
        manifest["pretrained"] = path
        layout.write_manifest(manifest)
    return path
