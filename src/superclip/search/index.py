"""The main index of a folder, chosen by the collection's size and a memory budget for latency:

- ``flat``: exact inner product, while an exact scan costs about a millisecond (``FLAT_MAX_FLOATS``);
- ``hnsw``: a faiss HNSW graph over the vectors at their stored precision (float16 parts: faiss's fp16 scalar
  quantizer, so its scores are exactly those of the stored vectors), when the graph fits ``max_memory``;
- ``ivfpq``: IVF over an HNSW coarse quantizer with PQ codes whose inverted lists are memory-mapped from the index
  file, the best candidates re-ranked with the stored vectors read from the parts, when the graph would not fit
  (ivf.py; built part by part, each stage resumable).

The search parameter (efSearch for ``hnsw``, nprobe for ``ivfpq``) is raised until recall@10 against exact search,
with ``RECALL_QUERIES`` of the vectors as queries (each left out of its own results), reaches the target; the
parameter and the recall reached are returned (and stored in the manifest).

Vectors are L2-normalised, so inner product is cosine similarity. Ids are the catalog's ids (int64).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Protocol, Sequence, Tuple

import faiss
import numpy as np

from ..errors import ConfigError
from .layout import write_bytes

log = logging.getLogger(__name__)

# Exact search while n * dim stays under this: bench/search_index.py measured an exact scan of one query at one
# thread at ~0.25 ms per 1,000 vectors of dim 512 (memory-bound: 2 KB a vector), so ~1 ms here (8k x 512, 32k x 128)
FLAT_MAX_FLOATS = 1 << 22
RECALL_TARGET = 0.97  # the build estimates recall on 1,000 queries (about ±0.005): aim above 0.95
RECALL_QUERIES = 1000
# hnswlib's defaults. On 1M x 512 `hard` vectors (bench/search_index.py) faiss's defaults, M 32 / efConstruction
# 40, reached only 0.948 at efSearch 2048 (p50 12.3 ms), where hnswlib's graph reached 0.963 at ef 64 (p50 0.51 ms):
# a walk built with 40 candidates does not find a node's ~100 cluster mates. Building costs ~4x as much
HNSW_M = 16  # neighbours per node (32 on the bottom layer): 128 bytes of graph a vector
HNSW_EF_CONSTRUCTION = 200
EF_STEPS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
PQ_MIN_VECTORS = 10_000  # 256 centroids per sub-quantizer need ~40 training points each
HNSW_BYTES_PER_VECTOR = 8 * HNSW_M + 48  # bottom-layer links, upper layers, offsets, levels, id map


class VectorSource(Protocol):
    """What an index is built over: ``count`` vectors of ``dim``, stored part by part."""

    dim: int
    count: int
    dtype: np.dtype  # how the parts store them (float16 or float32)

    def parts(self) -> Iterator[Tuple[int, np.ndarray, np.ndarray]]:
        """(part, ids (n,) int64, rows (n,) int64) of every part's indexed rows, parts in order."""

    def vectors(self, part: int, rows: np.ndarray) -> np.ndarray:
        """(len(rows), dim) float32 stored vectors of ``rows`` of ``part``."""


class ArraySource:
    """A VectorSource over one (n, D) array cut into parts of ``part_size`` rows (benchmarks, tests)."""

    def __init__(self, vectors: np.ndarray, ids: Optional[np.ndarray] = None, part_size: int = 100_000):
        self.array, self.part_size = vectors, part_size
        self.count, self.dim = vectors.shape
        self.dtype = vectors.dtype
        self.ids = np.arange(self.count, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)

    def parts(self):
        for p, s in enumerate(range(0, self.count, self.part_size)):
            e = min(s + self.part_size, self.count)
            yield p, self.ids[s:e], np.arange(e - s, dtype=np.int64)

    def vectors(self, part: int, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.array[part * self.part_size + rows], dtype=np.float32)

    def read(self, locations: np.ndarray) -> np.ndarray:
        """(n, D) float32 of ``locations`` (part << 32 | row): the re-ranking reader over this array."""
        locations = np.asarray(locations, dtype=np.int64)
        return np.asarray(self.array[(locations >> 32) * self.part_size + (locations & 0xFFFFFFFF)], np.float32)


def _human(nbytes: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if nbytes < 1024 or unit == "T":
            return f"{math.ceil(nbytes)}{unit}" if unit == "" else f"{math.ceil(nbytes * 10) / 10:g}{unit}"
        nbytes /= 1024
    return str(nbytes)


def nlist_for(n: int) -> int:
    return int(2 ** round(math.log2(max(16.0, math.sqrt(n)))))


def pq_m_for(dim: int) -> int:
    """Sub-quantizers of the PQ codes: one byte per 8 dimensions."""
    return max(m for m in range(1, max(1, dim // 8) + 1) if dim % m == 0)


def choose_params(n: int, dim: int, max_memory: int, stored_bytes: int = 2) -> Dict:
    """The index kind and its sizes for ``n`` vectors of ``dim`` (``stored_bytes`` a number in the parts) within
    ``max_memory`` bytes; a one-line ConfigError when no kind fits."""
    flat = n * (dim * 4 + 48)
    hnsw = n * (dim * stored_bytes + HNSW_BYTES_PER_VECTOR)
    if n * dim <= FLAT_MAX_FLOATS and flat <= max_memory:
        return {"kind": "flat"}
    if hnsw <= max_memory:
        return {"kind": "hnsw", "M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION}
    nlist, m = nlist_for(n), pq_m_for(dim)
    ivf = ivfpq_bytes(n, dim, nlist, m)
    if n >= PQ_MIN_VECTORS and ivf <= max_memory:
        return {"kind": "ivfpq", "nlist": nlist, "m": m}
    need = min(flat, hnsw, ivf if n >= PQ_MIN_VECTORS else math.inf)
    raise ConfigError(f"--max-index-memory {_human(max_memory)} is too small for an index of {n} vectors of dim {dim}:"
                      f" give at least {_human(need)}")


def ivfpq_bytes(n: int, dim: int, nlist: int, m: int) -> int:
    """Memory of an ``ivfpq`` build: codes + ids + locations of every vector, centroids and their graph."""
    return n * (m + 8 + 16) + nlist * (dim * 4 + HNSW_BYTES_PER_VECTOR) + 256 * dim * 4


# ---------------------------------------------------------------- exact search, recall


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(q, k) row positions of the exact top-k by inner product."""
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]


def exact_top_source(source: VectorSource, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """(q, k) scores and ids of the exact top-k over every vector of ``source``, read part by part."""
    scores = np.full((len(queries), k), -np.inf, np.float32)
    found = np.full((len(queries), k), -1, np.int64)
    for part, ids, rows in source.parts():
        if not len(ids):
            continue
        s, i = faiss.knn(queries, source.vectors(part, rows), min(k, len(ids)), metric=faiss.METRIC_INNER_PRODUCT)
        s, i = np.concatenate([scores, s], 1), np.concatenate([found, ids[i]], 1)
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        scores, found = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
    return scores, found


def recall_of(found: np.ndarray, truth: np.ndarray, query_ids: Optional[np.ndarray] = None, k: int = 10) -> float:
    """Mean share of each row's exact top-k ids (``truth``) found in its top-k (``found``); ``query_ids``: each
    query is a stored vector with this id, left out of both lists."""
    hits = []
    for row, (a, b) in enumerate(zip(found.tolist(), truth.tolist())):
        if query_ids is not None:
            a = [x for x in a if x != query_ids[row]]
            b = [x for x in b if x != query_ids[row]]
        hits.append(len(set(a[:k]) & set(b[:k])) / k)
    return float(np.mean(hits))


def sample_queries(source: VectorSource, count: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """(ids (q,), vectors (q, D) float32) of ``count`` stored vectors drawn at random (in source order)."""
    picks = np.sort(rng.choice(source.count, size=min(count, source.count), replace=False))
    ids, vecs, start = [], [], 0
    for part, part_ids, rows in source.parts():
        local = picks[(picks >= start) & (picks < start + len(rows))] - start
        if len(local):
            ids.append(part_ids[local])
            vecs.append(source.vectors(part, rows[local]))
        start += len(rows)
    if not ids:
        return np.zeros(0, np.int64), np.zeros((0, source.dim), np.float32)
    return np.concatenate(ids), np.concatenate(vecs)


# ---------------------------------------------------------------- the main index


class MainIndex:
    """A loaded main index: ``search`` over (q, D) float32 queries with an optional faiss id selector."""

    def __init__(self, index: faiss.Index, info: Dict, reranker=None):
        self.index, self.info, self.kind, self.reranker = index, info, info["kind"], reranker
        self.ntotal = index.ntotal

    def params(self, sel=None, **override):
        if self.kind == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=override.get("ef_search", self.info["ef_search"]), sel=sel)
        if self.info.get("nprobe") is not None:
            nprobe = override.get("nprobe", self.info["nprobe"])
            quantizer = faiss.SearchParametersHNSW(efSearch=max(64, 2 * nprobe)) if self.kind == "ivfpq" else None
            return faiss.SearchParametersIVF(nprobe=nprobe, sel=sel, quantizer_params=quantizer)
        return faiss.SearchParameters(sel=sel) if sel is not None else None

    def search(self, queries: np.ndarray, k: int, sel=None, **override) -> Tuple[np.ndarray, np.ndarray]:
        """(q, k) scores and (q, k) ids (-1 where fewer than k match)."""
        if self.ntotal == 0:
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        if self.reranker is not None:
            depth = max(k, override.get("rerank", self.info["rerank"]))
            scores, ids = self.index.search(queries, depth, params=self.params(sel, **override))
            return self.reranker(queries, ids, k)
        return self.index.search(queries, k, params=self.params(sel, **override))

    def widened(self, factor: float) -> Dict:
        """Search parameters visiting about ``factor`` times as many items (a filter drops the others)."""
        if self.kind == "hnsw":
            return {"ef_search": min(EF_STEPS[-1], int(self.info["ef_search"] * factor))}
        if self.info.get("nprobe") is not None:
            return {"nprobe": min(self.info["nlist"], int(math.ceil(self.info["nprobe"] * factor)))}
        return {}

    def ids(self) -> np.ndarray:
        """Every id the index holds."""
        return stored_ids(self.index)


def stored_ids(index: faiss.Index) -> np.ndarray:
    if hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    ivf = faiss.extract_index_ivf(index)
    invlists, out = ivf.invlists, []
    for lst in range(ivf.nlist):
        n = invlists.list_size(lst)
        if n:
            out.append(faiss.rev_swig_ptr(invlists.get_ids(lst), n).copy())
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def tune(main: MainIndex, key: str, steps: Sequence[int], queries: np.ndarray, query_ids: np.ndarray,
         truth: np.ndarray, target: float) -> Tuple[int, float]:
    """The smallest ``key`` in ``steps`` whose recall@10 reaches ``target`` (else the last), and that recall."""
    k = truth.shape[1] - 1
    recall = 0.0
    for value in steps:
        found = main.search(queries, k + 1, **{key: value})[1]
        recall = recall_of(found, truth, query_ids, k)
        log.info("%s %s %d: recall@%d %.4f", main.kind, key, value, k, recall)
        if recall >= target:
            break
    return value, recall


def _stream_add(index: faiss.Index, source: VectorSource) -> None:
    for part, ids, rows in source.parts():
        if len(ids):
            index.add_with_ids(source.vectors(part, rows), ids)


def _graph(dim: int, params: Dict, stored: np.dtype) -> faiss.Index:
    if stored == np.float16:  # the stored precision: scores equal those of the stored vectors
        graph = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, params["M"], faiss.METRIC_INNER_PRODUCT)
    else:
        graph = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = params["ef_construction"]
    return faiss.IndexIDMap(graph)


def write_faiss(index: faiss.Index, path: Path, point: str = "index-write") -> None:
    """``index`` into the file ``path``, atomically, streamed (never a second copy in memory)."""
    write_bytes(path, lambda f: faiss.write_index(index, faiss.PyCallbackIOWriter(f.write)), point=point)


def build(source: VectorSource, max_memory: int, folder: Path, generation: int, reader=None, seed: int = 0,
          target: float = RECALL_TARGET, reuse: Optional[Dict] = None) -> Tuple[MainIndex, Dict]:
    """Build the main index over ``source`` and write its files into ``folder`` (``main-{generation}.*``).

    ``reader``: (locations (n,) int64 -> (n, D) float32) stored vectors for re-ranking (``ivfpq``);
    ``reuse``: the previous index's info, whose trained quantizer and encoded parts an ``ivfpq`` build reuses.
    Returns the loaded index and its info (kind, sizes, search parameter, recall_at_10, files, build_seconds).
    ``hnsw`` graphs are built on one thread: with more, insertion order varies and a rerun would differ."""
    t0 = time.perf_counter()
    n, dim = source.count, source.dim
    params = choose_params(n, dim, max_memory, np.dtype(source.dtype).itemsize)
    rng = np.random.default_rng(seed)
    k = min(10, n - 1)
    query_ids, queries = sample_queries(source, RECALL_QUERIES if k > 0 else 0, rng)
    truth = exact_top_source(source, queries, k + 1)[1] if k > 0 else None
    name = f"main-{generation}.faiss"
    info = dict(params, count=int(n), dim=int(dim), file=name)
    if params["kind"] == "ivfpq":
        from . import ivf

        main, extra = ivf.build(source, params, folder, generation, reader, rng, reuse)
        info.update(extra)
        tuned = ivf.tune(main, queries, query_ids, truth, target)
        info.update(nprobe=tuned["nprobe"], rerank=tuned["rerank"])
        recall = tuned["recall"]
    else:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim)) if params["kind"] == "flat" else _graph(dim, params,
                                                                                                 source.dtype)
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1 if params["kind"] == "hnsw" else threads)
        try:
            _stream_add(index, source)
        finally:
            faiss.omp_set_num_threads(threads)
        main = MainIndex(index, dict(info, ef_search=EF_STEPS[0]))
        recall = None
        if params["kind"] == "hnsw" and k > 0:
            info["ef_search"], recall = tune(main, "ef_search", EF_STEPS, queries, query_ids, truth, target)
        elif k > 0:
            recall = recall_of(main.search(queries, k + 1)[1], truth, query_ids, k)
        main.info = info
        write_faiss(index, folder / name)
    info.update(recall_at_10=recall, build_seconds=round(time.perf_counter() - t0, 3))
    main.info = info
    log.info("index %s over %d vectors: recall@10 %s (%s)", info["kind"], n, recall,
             {key: info[key] for key in ("ef_search", "nprobe", "rerank") if key in info})
    return main, info


def load(folder: Path, info: Dict, reader=None) -> MainIndex:
    """The main index described by ``info`` (a manifest's ``index``), from ``folder``; ``ivfpq``'s inverted lists
    stay on disk (memory-mapped) and ``reader`` gives its re-ranking vectors."""
    path = folder / info["file"]
    if info["kind"] == "ivfpq" and "rerank" in info:
        from . import ivf

        return ivf.load(path, info, reader)
    # the vectors (and the graph) stay in the file, memory-mapped: the server's resident memory holds only the
    # pages its searches touch, and those can be dropped (a 1M-vector hnsw index: 1.3 GB anonymous memory without)
    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if info["kind"] in ("flat", "hnsw") else 0)
    if info["kind"] == "hnsw":
        faiss.downcast_index(index.index).hnsw.efSearch = info["ef_search"]
    return MainIndex(index, info)


def selector(allowed: Optional[np.ndarray] = None, banned: Optional[np.ndarray] = None):
    """A faiss id selector keeping ``allowed`` ids (when given) and dropping ``banned`` ones; None for no filter.
    The returned object keeps its inner selectors alive (faiss holds plain pointers)."""
    if allowed is not None:
        keep = np.setdiff1d(np.asarray(allowed, dtype=np.int64),
                            banned if banned is not None else np.zeros(0, np.int64))
        sel = faiss.IDSelectorBatch(keep)
        sel.keep = keep
        return sel
    if banned is not None and len(banned):
        inner = faiss.IDSelectorBatch(np.asarray(banned, dtype=np.int64))
        sel = faiss.IDSelectorNot(inner)
        sel.inner = inner
        return sel
    return None


def flat_index(vectors: np.ndarray, ids: np.ndarray) -> MainIndex:
    """An exact index over a few vectors (the additions not yet folded into the main index)."""
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
    return MainIndex(index, {"kind": "flat"})


def exact_among(vectors: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int) -> List[Tuple[int, float]]:
    """The ``k`` best (id, score) of (1, D) ``query`` among (n, D) ``vectors`` with ``ids``, by exact scan."""
    if not len(ids):
        return []
    scores = vectors @ query[0]
    top = np.argsort(-scores, kind="stable")[:k]
    return [(int(ids[i]), float(scores[i])) for i in top]
