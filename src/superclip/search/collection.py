"""``index build | add | remove | optimize``: the embedding job over parts, the catalog and the main index, each step
resumable.

The order of commits, and what a kill at any moment leaves:

1. plan: part plans are written, then the manifest's ``planned`` count (a plan counts once the manifest says so);
2. embed: each pending part is written (embeddings, metadata, ``done``); ranks of a torchrun job share the parts
   (part i on rank i mod world size), a rerun redoes only parts without ``done``;
3. ingest: rank 0 inserts the done parts into the catalog in part order, one transaction each (ids are assigned
   here, so they are the same whether the job ran once, in N processes or was killed and rerun);
4. index (build, optimize): a new main index file is written, then the manifest names it, then the old file goes.

Between commits the folder is always consistent: the searchable items are the main index's parts plus the
ingested parts it does not cover yet (searched exactly), minus deleted ids; that set is the catalog's live items.
"""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple


from .. import distributed
from ..errors import ConfigError
from . import index as faiss_index
from . import parts
from .catalog import Catalog
from .ivf import stale as stale_index_files
from .layout import FORMAT, VERSION, FolderLock, Layout, kill_point, write_bytes, write_json
from .names import tsv_field
from .sources import REASONS, Scan, file_sha256, plan_parts, resolve, shard_identity, shard_urls, source_kind
from .vectors import CatalogSource
from .vectors import reader as vector_reader

log = logging.getLogger(__name__)


@dataclass
class JobOptions:
    part_size: int = 10_000
    top_k: int = 5
    dtype: str = "float16"
    max_index_memory: int = 4 << 30
    csv_img_key: str = "filepath"
    csv_separator: Optional[str] = None
    thumb_size: int = 256
    progress: Optional[Callable[[int], None]] = field(default=None, repr=False)
    on_total: Optional[Callable[[Optional[int]], None]] = field(default=None, repr=False)


def _pending(layout: Layout, planned: int, ingested: Dict[int, int]) -> List[int]:
    return [i for i in range(planned) if i not in ingested]


def _write_plans(layout: Layout, first: int, plans: List[Dict]) -> None:
    for j, plan in enumerate(plans):
        write_json(layout.plan(first + j), plan)


def run_parts(layout: Layout, todo: List[int], embedder, opts: JobOptions) -> int:
    """Embed and write this rank's share of the parts in ``todo`` that are not done yet; returns the images read."""
    rank, world = distributed.rank(), distributed.world_size()
    mine = [i for i in todo if i % world == rank and not parts.is_done(layout, i)]
    plans = {i: json_plan(layout, i) for i in mine}
    if opts.on_total:
        opts.on_total(None if any("shard" in p for p in plans.values()) else sum(len(p["files"])
                                                                                 for p in plans.values()))
    images = 0
    for i in mine:
        result = embedder.run(plans[i], opts.progress)
        parts.write_part(layout, i, result)
        images += len(result.embeddings) + len(result.skipped)
        log.info("rank %d wrote part %d", rank, i)
    return images


def json_plan(layout: Layout, i: int) -> Dict:
    from .layout import read_json

    return read_json(layout.plan(i))


def ingest(layout: Layout, catalog: Catalog, manifest: Dict) -> int:
    """Insert every done, not yet ingested part into the catalog, in part order; returns the items added. Rows an
    exclusion names are not taken (``index remove`` ran while the part was pending)."""
    ingested = catalog.ingested_parts()
    excluded = catalog.exclusion_test()
    added = 0
    for i in _pending(layout, manifest["planned"], ingested):
        if not parts.is_done(layout, i):
            raise ConfigError(f"part {i} of {layout.root} is not written: rerun the command to finish it")
        plan = json_plan(layout, i)
        shard = (plan["shard"], plan["identity"]) if "shard" in plan else None
        done = parts.read_done(layout, i)
        added += len(catalog.ingest_part(i, parts.read_metadata(layout, i), shard, done["skipped"],
                                         layout.done(i).stat().st_mtime, excluded))
        kill_point("ingest")
    write_skipped(layout, catalog)
    manifest["parts"] = {str(i): parts.read_done(layout, i)["count"] for i in sorted(catalog.ingested_parts())}
    manifest["skipped"] = len(catalog.skipped())
    layout.write_manifest(manifest)
    return added


def write_skipped(layout: Layout, catalog: Catalog) -> None:
    """skipped.tsv: every file not indexed, one line each: path TAB reason (both escaped, :func:`names.tsv_field`)."""
    lines = [f"{tsv_field(p)}\t{tsv_field(REASONS[r] + (': ' + d if d else ''))}\n" for p, r, d in catalog.skipped()]
    write_bytes(layout.skipped, lambda f: f.write("".join(lines).encode()))


def skipped_counts(catalog: Catalog) -> Dict[str, int]:
    """reason code -> files not indexed for it."""
    counts: Dict[str, int] = {}
    for _, reason, _ in catalog.skipped():
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def live_vectors(layout: Layout, catalog: Catalog, only_parts=None):
    """(ids (n,) int64, vectors (n, D) float32) of the live items (of ``only_parts``), by id."""
    m = layout.read_manifest()
    return CatalogSource(layout, catalog, m["dim"], m["dtype"], only_parts).all()


def new_main_index(layout: Layout, catalog: Catalog, manifest: Dict, max_memory: int, dim: Optional[int] = None,
                   reuse: bool = True) -> Dict:
    """Write the files of a new main index over every live item of the ingested parts, read part by part; returns
    the manifest's ``index`` record naming them (the caller writes the manifest, then :func:`drop_stale_index`).
    ``dim``: the vectors' (a re-embedding's new model; default the manifest's); ``reuse``: whether an ``ivfpq`` build
    may reuse the previous index's trained quantizer and encoded parts (not over new vectors)."""
    covered = sorted(catalog.ingested_parts())
    source = CatalogSource(layout, catalog, dim or manifest["dim"], manifest["dtype"])
    old = manifest.get("index")
    generation = (old["generation"] + 1) if old else 0
    folder = layout.root / "index"
    folder.mkdir(parents=True, exist_ok=True)
    reader = vector_reader(layout)
    try:
        _, info = faiss_index.build(source, max_memory, folder, generation, reader=reader,
                                    reuse=old if reuse else None)
    finally:
        reader.close()
    return dict(info, generation=generation, file=f"index/{info['file']}", parts=covered, max_index_memory=max_memory)


def drop_stale_index(layout: Layout, info: Dict) -> None:
    """Delete the index files that the manifest's index ``info`` does not use (written after the manifest)."""
    for stale in stale_index_files(layout.root / "index", dict(info, file=Path(info["file"]).name)):
        stale.unlink()


def build_main_index(layout: Layout, catalog: Catalog, manifest: Dict, max_memory: int) -> Dict:
    """Write a new main index over every live item of the ingested parts, then point the manifest at it and delete
    the files of the old one."""
    info = new_main_index(layout, catalog, manifest, max_memory)
    kill_point("index-before-manifest")
    manifest["index"] = info
    layout.write_manifest(manifest)
    drop_stale_index(layout, info)
    return info


def _broadcast_or_raise(value):
    """Rank 0's value (or its one-line error) on every rank."""
    value = distributed.broadcast_object(value)
    if isinstance(value, dict) and "__error__" in value:
        raise ConfigError(value["__error__"])
    return value


def start(root: str, sources: List[str], opts: JobOptions, model_info: Dict, build: bool) -> Dict:
    """Plan (rank 0) and share the manifest with every rank. ``build``: a new index, or the continuation of a build
    of the same sources and model; else ``add`` to an existing index."""
    layout = Layout(root)
    manifest = None
    if distributed.rank() == 0:
        try:
            manifest = _plan(layout, sources, opts, model_info, build)
        except ConfigError as e:
            manifest = {"__error__": str(e)}
    return _broadcast_or_raise(manifest)


def _plan(layout: Layout, sources: List[str], opts: JobOptions, model_info: Dict, build: bool) -> Dict:
    for s in sources:
        source_kind(s)  # a missing or unknown source fails before anything is written
    scan = Scan()
    if build:
        if layout.manifest.exists():
            m = layout.read_manifest()
            if m["sources"] != sources or m["checkpoint_sha256"] != model_info["checkpoint_sha256"] or \
                    m.get("random_weights_seed") != model_info.get("random_weights_seed"):
                raise ConfigError(f"{layout.root} holds an index of other sources or another model: add to it with "
                                  "superclip index add, or build into a new folder")
            _record_scan(layout, scan.scan_only(sources, opts.csv_img_key, opts.csv_separator))
            return m
        others = layout.foreign()
        if others:
            raise ConfigError(f"{layout.root} is not empty and holds no index ({others[0]}, ...): name a new folder")
        plans = _identify(plan_parts(sources, opts.part_size, opts.csv_img_key, opts.csv_separator, scan=scan))
        _write_plans(layout, 0, plans)
        m = {"format": FORMAT, "version": VERSION, **model_info, "sources": sources, "dtype": opts.dtype,
             "top_k": opts.top_k, "part_size": opts.part_size, "thumb_size": opts.thumb_size,
             "planned": len(plans), "parts": {}}
        layout.write_manifest(m, point="plan-manifest")
        _record_scan(layout, scan)
        return m
    m = layout.read_manifest()
    catalog = Catalog(layout.catalog)
    try:
        if _pending(layout, m["planned"], catalog.ingested_parts()):
            catalog.record_scan(*_fields(scan.scan_only(sources, opts.csv_img_key, opts.csv_separator)))
            return m  # an interrupted add: finish its parts first; what else is new is planned by the next add
        plans, gone = _changes(layout, catalog, sources, opts, scan)
        catalog.mark_deleted(gone)
        _write_plans(layout, m["planned"], plans)
        m["planned"] += len(plans)
        m["sources"] = sorted(set(m["sources"]) | set(sources))
        layout.write_manifest(m, point="plan-manifest")
        catalog.record_scan(*_fields(scan))
    finally:
        catalog.close()
    m["removed_now"] = len(gone)
    return m


def _fields(scan: Scan):
    return scan.folders, scan.files, scan.skipped


def _record_scan(layout: Layout, scan: Scan) -> None:
    catalog = Catalog(layout.catalog)
    try:
        catalog.record_scan(*_fields(scan))
    finally:
        catalog.close()


def _identify(plans: List[Dict]) -> List[Dict]:
    return [dict(p, identity=shard_identity(p["shard"])) if "shard" in p else p for p in plans]


def _changes(layout: Layout, catalog: Catalog, sources: List[str], opts: JobOptions, scan: Scan):
    """(plans of new or changed images, live ids to delete: replaced, or gone from a folder source). A file an
    earlier job could not read is tried again only once it changed (a newer mtime); a file or shard an exclusion
    names (``index remove``) is not planned."""
    live = catalog.live_files()
    unreadable = catalog.unreadable()
    shards = catalog.known_shards()
    excluded = catalog.exclusion_test()
    new_files, new_shards, gone = [], [], []
    seen = set()
    for source in sources:
        kind = source_kind(source)
        if kind == "shards":
            for url in shard_urls(source):
                if url in seen or excluded(url, url):
                    continue
                seen.add(url)
                identity = shard_identity(url)
                if shards.get(url) == identity:
                    continue
                gone += catalog.ids_of_source(url)
                new_shards.append({"shard": url, "identity": identity})
            continue
        paths = scan.source_files(source, opts.csv_img_key, opts.csv_separator, excluded)
        if kind == "folder":
            present = set(paths)
            path_of = {row[0]: p for p, row in live.items()}
            gone += [i for i in catalog.ids_under(resolve(source)) if path_of.get(i) not in present]
        for path in paths:
            if path in seen:
                continue
            seen.add(path)
            try:
                st = os.stat(path)
            except OSError:  # gone since the listing, or a CSV row naming nothing: read (and listed) as unreadable
                st = None
            if path in unreadable and (st is None or st.st_mtime <= unreadable[path]):
                continue
            if path in live and st is not None:
                item_id, size, mtime, sha = live[path]
                if (st.st_size, st.st_mtime) == (size, mtime):
                    continue
                try:
                    same = file_sha256(path) == sha
                except OSError:
                    same = False
                if same:
                    catalog.touch(item_id, st.st_size, st.st_mtime)
                    continue
                gone.append(item_id)
            elif path in live:
                gone.append(live[path][0])
            new_files.append(path)
    plans = [{"files": new_files[s:s + opts.part_size]} for s in range(0, len(new_files), opts.part_size)]
    return plans + new_shards, sorted(set(gone))


def finish(layout: Layout, manifest: Dict, embedder, opts: JobOptions, index_all: bool) -> Dict:
    """Embed pending parts (every rank), then ingest and (``index_all``) rebuild the main index (rank 0)."""
    catalog = Catalog(layout.catalog) if distributed.rank() == 0 else None
    ingested = distributed.broadcast_object(catalog.ingested_parts() if catalog else None)
    t0 = time.perf_counter()
    embedded = run_parts(layout, _pending(layout, manifest["planned"], ingested), embedder, opts)
    distributed.barrier()
    report = {"embedded": sum(distributed.all_gather_object(embedded)), "embed_seconds": time.perf_counter() - t0}
    if catalog is not None:
        try:
            report["added"] = ingest(layout, catalog, manifest)
            index_info = manifest.get("index")
            if index_all and (index_info is None or index_info["parts"] != sorted(catalog.ingested_parts())):
                build_main_index(layout, catalog, manifest, opts.max_index_memory)
            report.update(live=catalog.live_count(), skipped=skipped_counts(catalog), index=manifest.get("index"))
        finally:
            catalog.close()
    distributed.barrier()
    return report


@contextmanager
def changing(root: str) -> Iterator[Tuple[Layout, Dict, Catalog]]:
    """(layout, manifest, catalog) of an existing index, held under the folder's lock for a command that changes
    it; the lock is taken before the manifest is read (a build or add may be writing it), and the catalog closed
    and the lock released however the command ends."""
    layout = Layout(root)
    lock = FolderLock(layout.root, create=False)
    try:
        manifest = layout.read_manifest()
        catalog = Catalog(layout.catalog)
        try:
            yield layout, manifest, catalog
        finally:
            catalog.close()
    finally:
        lock.release()


def optimize(root: str, max_index_memory: Optional[int] = None) -> Dict:
    """Fold the additions and removals into a new main index."""
    with changing(root) as (layout, manifest, catalog):
        if manifest.get("reembed"):
            raise ConfigError(f"{root} is being re-embedded with another checkpoint: finish that first (rerun "
                              f"superclip index reembed {root} --pretrained ...)")
        if _pending(layout, manifest["planned"], catalog.ingested_parts()):
            raise ConfigError(f"{root} has parts not yet ingested: rerun superclip index build/add first")
        budget = max_index_memory or manifest.get("index", {}).get("max_index_memory") or JobOptions.max_index_memory
        return build_main_index(layout, catalog, manifest, budget)
