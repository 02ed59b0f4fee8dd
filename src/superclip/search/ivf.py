"""The ``ivfpq`` main index, for collections whose graph would not fit the memory budget: IVF over an HNSW coarse
quantizer, PQ codes (one byte per 8 dimensions) in inverted lists that ``serve`` memory-maps from the index file,
and the best ``rerank`` candidates re-scored with the stored vectors, read from the parts with ``pread``
(:class:`PartRows`: they stay in the page cache, out of the process's resident memory), or with ``serve
--map-vectors`` gathered from the parts mapped side by side (mapped.py: ~3x faster).

Built in stages, each file written atomically and reused by a rerun (and by ``optimize`` while the trained
quantizer still suits the collection: only the parts it has not seen are encoded):

1. ``ivf-{t}.trained``: spherical k-means centroids (seeded, on a sample of :func:`train_per_list` vectors a list),
   their HNSW graph (built on one thread, so the same every time) and the PQ trained on the sample's residuals;
2. ``ivf-{t}-{part:05d}.npz``: one part's rows, their list numbers and codes (a row deleted later is dropped at 3);
3. ``main-{g}.loc.npy`` ((n, 2) int64: id, part << 32 | row, by id: where re-ranking reads a vector) and
   ``main-{g}.faiss``: the trained index holding the live rows, each list sized before it is filled, so the build
   holds the codes once: peak memory ~ the codes, ids and locations plus one part and the training sample.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import faiss
import numpy as np

from .layout import kill_point, write_bytes
from .mapped import npy_layout

log = logging.getLogger(__name__)

# k-means sample: 160 vectors a list while sample x lists stays under KMEANS_WORK (nlist <= 1,024, ~1.5M vectors),
# fewer above, never under faiss's minimum of 39. On 1M x 512 `hard` vectors (bench/search_why.py) 40 a list put
# 51.5 % of a query's exact top-10 in its first list and needed 205 of 1,024 lists for 95 % of them; 160 a list:
# 85.6 % and 43 lists (training 87 s -> 230 s on the loaded machine)
TRAIN_PER_LIST = 160
TRAIN_MIN_PER_LIST = 40
KMEANS_WORK = 1 << 28
KMEANS_ITERATIONS = 20
RERANK = 100  # candidates re-scored exactly; doubled by the tuning while more probes stop helping
# 10M x 512 `easy` (bench/search_10m_sweep.py): with every one of 4,096 lists probed, re-ranking 800 reached only
# 0.870 (64-byte codes cannot order a cluster of ~5,000 nearly equal vectors); 1,600 reached 0.965 at nprobe 4
# (p50 12.2 ms), 3,200 0.998 (31 ms)
RERANK_MAX = 3200
QUANTIZER_M = 32


def nprobe_steps(nlist: int) -> List[int]:
    steps, p = [], 1
    while p <= nlist:
        steps.append(p)
        p *= 2
    return steps


def train_per_list(nlist: int) -> int:
    """Training vectors a list for ``nlist`` lists: k-means' cost grows with sample x lists."""
    return max(TRAIN_MIN_PER_LIST, min(TRAIN_PER_LIST, KMEANS_WORK // (nlist * nlist)))


def location(part: int, rows: np.ndarray) -> np.ndarray:
    return (np.int64(part) << 32) | rows.astype(np.int64)


def _one_thread(fn):
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return fn()
    finally:
        faiss.omp_set_num_threads(threads)


def train(source, params: Dict, rng: np.random.Generator) -> faiss.IndexIVFPQ:
    """An empty IndexIVFPQ with its centroids, their HNSW graph and its PQ trained on a sample of ``source``."""
    from .index import sample_queries

    dim, nlist = source.dim, params["nlist"]
    per_list = train_per_list(nlist)
    sample = sample_queries(source, per_list * max(nlist, 256), rng)[1]  # 256: the centroids of a PQ byte
    kmeans = faiss.Kmeans(dim, nlist, niter=KMEANS_ITERATIONS, seed=int(rng.integers(1 << 30)), spherical=True,
                          max_points_per_centroid=per_list * 4)
    kmeans.train(sample)
    quantizer = faiss.IndexHNSWFlat(dim, QUANTIZER_M, faiss.METRIC_INNER_PRODUCT)
    _one_thread(lambda: quantizer.add(kmeans.centroids))
    quantizer.hnsw.efSearch = 64
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, params["m"], 8, faiss.METRIC_INNER_PRODUCT)
    index.pq.cp.seed = int(rng.integers(1 << 30))
    index.train(sample)  # the quantizer holds nlist centroids already: this trains the PQ on the residuals
    index.own_fields = True
    quantizer.this.disown()
    return index


def encode(index: faiss.IndexIVFPQ, vectors: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(list numbers (n,) int64, codes (n, code_size) uint8) of (n, D) float32 ``vectors``."""
    lists = faiss.downcast_index(index.quantizer).search(vectors, 1)[1][:, 0].astype(np.int64)
    codes = np.empty((len(vectors), index.code_size), np.uint8)
    if len(vectors):
        index.encode_vectors(len(vectors), faiss.swig_ptr(vectors), faiss.swig_ptr(lists), faiss.swig_ptr(codes))
    return lists, codes


def suits(old: Optional[Dict], params: Dict) -> bool:
    """Whether the quantizer trained for the index ``old`` (a manifest's info) suits an index of ``params``: the
    same codes, and a number of lists within a factor 2 of the one chosen for the collection now."""
    return bool(old) and old.get("kind") == "ivfpq" and "trained" in old and old.get("m") == params["m"] and \
        params["nlist"] / 2 <= old["nlist"] <= params["nlist"] * 2


def _save_npz(path: Path, **arrays) -> None:
    write_bytes(path, lambda f: np.savez(f, **arrays))


def build(source, params: Dict, folder: Path, generation: int, reader, rng: np.random.Generator,
          reuse: Optional[Dict] = None):
    """Write ``ivfpq`` main index ``generation`` over ``source`` into ``folder``; returns (the loaded index, info:
    trained, loc_file, rerank)."""
    from .index import write_faiss

    t = generation
    if suits(reuse, params) and (folder / f"ivf-{reuse['trained']}.trained").is_file():
        t, params = reuse["trained"], dict(params, nlist=reuse["nlist"])
    trained_path = folder / f"ivf-{t}.trained"
    folder.mkdir(parents=True, exist_ok=True)
    index = faiss.read_index(str(trained_path)) if trained_path.is_file() else None
    if index is not None and (index.d != source.dim or index.nlist != params["nlist"]):
        index = None  # left by a killed build over other vectors (a re-embedding's other model): trained again
    if index is None:
        index = train(source, params, rng)
        write_faiss(index, trained_path, point="ivf-train")
    blocks = {}
    for part, ids, rows in source.parts():
        path = folder / f"ivf-{t}-{part:05d}.npz"
        blocks[part] = path
        if path.is_file() or not len(rows):
            continue
        lists, codes = encode(index, source.vectors(part, rows))
        _save_npz(path, rows=rows.astype(np.int32), lists=lists.astype(np.int32), codes=codes)
        kill_point("ivf-part")
    sizes = np.zeros(params["nlist"], np.int64)
    for part, ids, rows in source.parts():
        if len(rows):
            sizes += np.bincount(_block(blocks[part], rows, codes=False)[0], minlength=params["nlist"])
    invlists = faiss.downcast_InvertedLists(index.invlists)
    for lst in np.flatnonzero(sizes).tolist():
        invlists.resize(lst, int(sizes[lst]))
    filled = np.zeros(params["nlist"], np.int64)
    loc_ids, locs = [], []
    for part, ids, rows in source.parts():
        if not len(rows):
            continue
        lists, codes = _block(blocks[part], rows)
        order = np.argsort(lists, kind="stable")
        lists, codes, part_ids = lists[order], np.ascontiguousarray(codes[order]), np.ascontiguousarray(ids[order])
        starts = np.flatnonzero(np.r_[True, lists[1:] != lists[:-1]])
        ends = np.r_[starts[1:], len(lists)]
        for s, e in zip(starts.tolist(), ends.tolist()):
            lst = int(lists[s])
            invlists.update_entries(lst, int(filled[lst]), e - s, faiss.swig_ptr(part_ids[s:]),
                                    faiss.swig_ptr(codes[s:]))
            filled[lst] += e - s
        loc_ids.append(ids)
        locs.append(location(part, rows))
    index.ntotal = int(sizes.sum())
    ids = np.concatenate(loc_ids) if loc_ids else np.zeros(0, np.int64)
    locs = np.concatenate(locs) if locs else np.zeros(0, np.int64)
    order = np.argsort(ids, kind="stable")
    loc = np.stack([ids[order], locs[order]], axis=1)
    loc_file = f"main-{generation}.loc.npy"
    write_bytes(folder / loc_file, lambda f: np.save(f, loc))
    write_faiss(index, folder / f"main-{generation}.faiss")
    info = dict(params, trained=t, loc_file=loc_file, rerank=RERANK, nprobe=1)
    return load(folder / f"main-{generation}.faiss", info, reader), {"trained": t, "loc_file": loc_file,
                                                                      "rerank": RERANK, "nlist": params["nlist"]}


def _block(path: Path, rows: np.ndarray, codes: bool = True) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(list numbers, codes) of ``rows`` (ascending) from a part's encoded block, which holds every row that was
    live when it was encoded (rows are only ever deleted since)."""
    with np.load(path) as z:
        at = np.searchsorted(z["rows"], rows)
        return z["lists"][at].astype(np.int64), (z["codes"][at] if codes else None)


def tune(main, queries: np.ndarray, query_ids: np.ndarray, truth: np.ndarray, target: float) -> Dict:
    """nprobe doubled until recall@10 reaches ``target``; the re-ranking depth doubled (up to RERANK_MAX) whenever
    more lists stop helping (a doubled nprobe gains less than 0.005, or every list is probed): the candidates, not
    the lists, are then what is missing, and nprobe starts again from 1 (with more candidates, fewer lists may do:
    before, the 10M build stored nprobe 4,096, every list, where 4 did as well)."""
    from .index import recall_of

    k = truth.shape[1] - 1
    steps = nprobe_steps(main.info["nlist"])
    rerank, at, recall, last = RERANK, 0, 0.0, None
    while True:
        nprobe = steps[at]
        found = main.search(queries, k + 1, nprobe=nprobe, rerank=rerank)[1]
        recall = recall_of(found, truth, query_ids, k)
        log.info("ivfpq nprobe %d rerank %d: recall@%d %.4f", nprobe, rerank, k, recall)
        if recall >= target:
            break
        stalled = at + 1 == len(steps) or (last is not None and recall - last < 0.005)
        if stalled and rerank < RERANK_MAX:
            rerank, at, last = rerank * 2, 0, None
            continue
        if at + 1 == len(steps):
            break
        at, last = at + 1, recall
    return {"nprobe": nprobe, "rerank": rerank, "recall": recall}


def stale(folder: Path, keep: Dict) -> List[Path]:
    """Files of ``folder`` (index/) that the index ``keep`` (a manifest's info) does not use."""
    used = {keep.get("file"), keep.get("loc_file")}
    t = keep.get("trained")
    out = []
    for p in folder.iterdir():
        if p.name in used or (t is not None and (p.name == f"ivf-{t}.trained" or p.name.startswith(f"ivf-{t}-"))):
            continue
        if p.name.startswith(("main-", "ivf-")) and not p.name.endswith(".tmp"):
            out.append(p)
    return out


class Reranker:
    """Exact re-scoring of candidate ids with their stored vectors: ids -> locations (``loc``, sorted by id) ->
    vectors (``reader``)."""

    def __init__(self, loc: np.ndarray, reader: Callable[[np.ndarray], np.ndarray]):
        self.reader = reader
        # id -> location by a table indexed by id (8 bytes an id in the span; one memory access a candidate) while
        # the ids are dense enough, else by binary search: 3,200 candidates searched in 10M sorted ids were ~77k
        # scattered reads, 4.7 ms of a 10M index's 22.9 ms query (bench/search_10m.py)
        ids = loc[:, 0]
        self.first = int(ids[0]) if len(ids) else 0
        span = int(ids[-1]) - self.first + 1 if len(ids) else 0
        if span <= 2 * len(ids) + 1024:
            self.table = np.full(span, -1, np.int64)
            self.table[np.asarray(ids) - self.first] = loc[:, 1]
        else:
            self.table, self.loc_ids, self.locs = None, np.ascontiguousarray(ids), loc[:, 1]

    def locations(self, ids: np.ndarray) -> np.ndarray:
        """Locations of ``ids`` (every one in the index)."""
        if self.table is not None:
            return self.table[ids - self.first]
        return np.asarray(self.locs[np.searchsorted(self.loc_ids, ids)])

    def __call__(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        for i, (q, cand) in enumerate(zip(queries, candidates)):
            cand = cand[cand >= 0]
            if not len(cand):
                continue
            vectors = self.reader(self.locations(cand))
            s = vectors @ q
            top = np.lexsort((cand, -s))[:k]
            scores[i, :len(top)], ids[i, :len(top)] = s[top], cand[top]
        return scores, ids


def load(path: Path, info: Dict, reader):
    from .index import MainIndex

    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    # the memory-mapped lists would start 32 prefetch threads on every search: 3.8 ms a query at 30k vectors, 0.17
    # without; the page cache does the prefetching
    faiss.downcast_InvertedLists(index.invlists).prefetch_nthread = 0
    loc = np.load(path.parent / info["loc_file"], mmap_mode="r")
    return MainIndex(index, info, Reranker(loc, reader))


class PartRows:
    """Stored vectors by location (part << 32 | row), read with ``pread`` from the parts' ``.npy`` files
    (``path_of(part)``); thread-safe."""

    def __init__(self, path_of: Callable[[int], Path]):
        self.path_of = path_of
        self.files: Dict[int, Tuple[int, int, np.dtype, int]] = {}
        self.lock = threading.Lock()

    def _file(self, part: int):
        got = self.files.get(part)
        if got is None:
            with self.lock:
                offset, dtype, shape = npy_layout(self.path_of(part))
                if len(shape) != 2:
                    raise ValueError(f"{self.path_of(part)}: not a (rows, dim) array")
                fd = os.open(self.path_of(part), os.O_RDONLY)
                got = self.files.setdefault(part, (fd, offset, dtype, shape[1]))
        return got

    def __call__(self, locations: np.ndarray) -> np.ndarray:
        """(n, D) float32 of ``locations`` (n,) int64."""
        out = []
        for loc in np.asarray(locations, dtype=np.int64).tolist():
            fd, offset, dtype, dim = self._file(loc >> 32)
            size = dtype.itemsize * dim
            out.append(np.frombuffer(os.pread(fd, size, offset + (loc & 0xFFFFFFFF) * size), dtype=dtype))
        return np.asarray(out, dtype=np.float32).reshape(len(out), -1)

    def close(self) -> None:
        with self.lock:
            for fd, *_ in self.files.values():
                os.close(fd)
            self.files.clear()

    def __del__(self):  # a searcher that replaced its reader (another folder in its place) drops the old one
        self.close()
