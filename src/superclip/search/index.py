"""The faiss index: exact inner product while small, IVF beyond ``FLAT_MAX`` vectors, IVF-PQ when the raw vectors
would not fit ``max_memory``; ``nprobe`` is raised until recall@10 against exact search on a sample of the data
reaches the target, and the recall reached is returned (and stored in the manifest).

Vectors are L2-normalised, so inner product is cosine similarity. Ids are the catalog's ids (int64).
"""
from __future__ import annotations

import logging
import math
import time
from typing import Dict, Optional, Tuple

import faiss
import numpy as np

log = logging.getLogger(__name__)

# Exact search up to this many vectors: bench/search_index.py measured exact search of one query (dim 512, one
# thread, this 2-core machine) at p50 ~2 ms over 10k, ~7 ms over 30k and ~30 ms over 100k vectors (docs/search.md);
# IVF answers in about a millisecond from here on, and below this its training and recall loss buy little.
FLAT_MAX = 30_000
RECALL_TARGET = 0.97  # the build estimates recall on 1,000 queries (about ±0.005): aim above 0.95
RECALL_QUERIES = 1000


def choose_params(n: int, dim: int, max_memory: int) -> Dict:
    """The index kind and its sizes for ``n`` vectors of ``dim`` within ``max_memory`` bytes."""
    raw = n * (dim * 4 + 8)  # float32 vectors + int64 ids
    if n <= FLAT_MAX and raw <= max_memory:
        return {"kind": "flat"}
    nlist = int(2 ** round(math.log2(max(16.0, math.sqrt(n)))))
    if raw <= max_memory:
        return {"kind": "ivf", "nlist": nlist}
    fits = [m for m in range(dim, 0, -1) if dim % m == 0 and n * (m + 8) <= max_memory]
    if not fits:
        from ..errors import ConfigError

        raise ConfigError(f"--max-index-memory {max_memory} bytes cannot hold {n} vectors even as 1-byte PQ codes")
    return {"kind": "ivfpq", "nlist": nlist, "m": min(fits[0], 64 if dim >= 64 else fits[0])}


def _empty_index(params: Dict, dim: int) -> faiss.Index:
    if params["kind"] == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    quantizer = faiss.IndexFlatIP(dim)
    if params["kind"] == "ivf":
        return faiss.IndexIVFFlat(quantizer, dim, params["nlist"], faiss.METRIC_INNER_PRODUCT)
    return faiss.IndexIVFPQ(quantizer, dim, params["nlist"], params["m"], 8, faiss.METRIC_INNER_PRODUCT)


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(q, k) row positions of the exact top-k by inner product."""
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    return flat.search(queries, k)[1]


def recall_at(index: faiss.Index, ids: np.ndarray, queries: np.ndarray, truth: np.ndarray, nprobe: int,
              query_ids: Optional[np.ndarray] = None) -> float:
    """Mean share of the exact top-k ids (``truth``: (q, k) row positions) found in the index's top-k.

    ``query_ids``: the queries are stored vectors with these ids; each is left out of both lists (``truth`` then
    holds k + 1 columns), so that a query finding itself does not flatter the figure."""
    k = truth.shape[1] - (query_ids is not None)
    params = faiss.SearchParametersIVF(nprobe=nprobe) if hasattr(index, "nprobe") else None
    found = index.search(queries, truth.shape[1], params=params)[1]
    want = ids[truth]
    hits = []
    for row, (a, b) in enumerate(zip(found.tolist(), want.tolist())):
        if query_ids is not None:
            a = [x for x in a if x != query_ids[row]][:k]
            b = [x for x in b if x != query_ids[row]][:k]
        hits.append(len(set(a) & set(b[:k])) / k)
    return float(np.mean(hits))


def build(vectors: np.ndarray, ids: np.ndarray, max_memory: int, seed: int = 0,
          target: float = RECALL_TARGET) -> Tuple[faiss.Index, Dict]:
    """An index over (n, D) float32 ``vectors`` with int64 ``ids``; returns it and its info (kind, sizes, nprobe,
    recall_at_10 against exact search with up to ``RECALL_QUERIES`` of the vectors as queries, each left out of its
    own results; build_seconds)."""
    t0 = time.perf_counter()
    n, dim = vectors.shape
    params = choose_params(n, dim, max_memory)
    index = _empty_index(params, dim)
    rng = np.random.default_rng(seed)
    if params["kind"] != "flat":
        train = vectors[np.sort(rng.choice(n, size=min(n, 50 * params["nlist"]), replace=False))]
        index.cp.seed = seed
        index.train(train)
    if n:
        index.add_with_ids(vectors, ids)
    info = dict(params, count=int(n), dim=int(dim))
    k = min(10, n - 1)
    if k <= 0:
        return index, dict(info, recall_at_10=None, nprobe=None, build_seconds=time.perf_counter() - t0)
    rows = np.sort(rng.choice(n, size=min(n, RECALL_QUERIES), replace=False))
    queries, query_ids = vectors[rows], ids[rows]
    truth = exact_top(vectors, queries, k + 1)  # + 1: each query is a stored vector, left out of its results
    nprobe = None
    if params["kind"] == "flat":
        recall = recall_at(index, ids, queries, truth, 1, query_ids)
    else:
        nprobe = 1
        while True:
            recall = recall_at(index, ids, queries, truth, nprobe, query_ids)
            if recall >= target or nprobe >= params["nlist"]:
                break
            nprobe *= 2
        index.nprobe = min(nprobe, params["nlist"])
    log.info("index %s over %d vectors: recall@10 %.4f (nprobe %s)", params["kind"], n, recall, nprobe)
    return index, dict(info, recall_at_10=recall, nprobe=nprobe, build_seconds=round(time.perf_counter() - t0, 3))


def serialize(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def deserialize(data: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def selector(allowed: Optional[np.ndarray] = None, banned: Optional[np.ndarray] = None):
    """A faiss id selector keeping ``allowed`` ids (when given) and dropping ``banned`` ones; None for no filter.
    The returned object keeps its inner selectors alive (faiss holds plain pointers)."""
    if allowed is not None:
        keep = np.asarray(sorted(set(allowed.tolist()) - set(banned.tolist() if banned is not None else ())),
                          dtype=np.int64)
        sel = faiss.IDSelectorBatch(keep)
        sel.keep = keep
        return sel
    if banned is not None and len(banned):
        inner = faiss.IDSelectorBatch(np.asarray(banned, dtype=np.int64))
        sel = faiss.IDSelectorNot(inner)
        sel.inner = inner
        return sel
    return None


def search(index: faiss.Index, queries: np.ndarray, k: int, sel=None) -> Tuple[np.ndarray, np.ndarray]:
    """(q, k) scores and (q, k) ids (-1 where fewer than k match) for (q, D) float32 queries."""
    if index.ntotal == 0:
        return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
    if hasattr(index, "nprobe"):
        params = faiss.SearchParametersIVF(sel=sel, nprobe=index.nprobe)
    else:
        params = faiss.SearchParameters(sel=sel) if sel is not None else None
    return index.search(queries, k, params=params)


def flat_index(vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    """An exact index over a few vectors (the additions not yet folded into the main index)."""
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    if len(ids):
        index.add_with_ids(vectors, ids)
    return index
