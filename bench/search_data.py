"""Synthetic embedding collections for the search benchmarks, generated once into a cache and memory-mapped after:
``$SUPERCLIP_BENCH_CACHE`` (default /work/bench-cache, outside git; 1M x 512 takes 1 GB as float16).

Two distributions of L2-normalised vectors (cluster centres on the sphere plus Gaussian offsets of norm ``spread``
times the centre's, renormalised):

- ``hard``: 10,000 clusters, spread 1.0: clusters overlap and are nearly equidistant, so a graph or a coarse
  quantizer has little to steer by (docs/search.md's original benchmark data);
- ``easy``: 2,000 clusters, spread 0.6: well separated clusters.

Each collection: ``base.npy`` (n, D) float16 (what ``superclip index`` stores), ``queries.npy`` (q, D) float32
held-out queries from the same clusters, ``truth.npy`` (q, 10) int64 positions of their exact top-10 (inner
product over the float16 vectors as float32). Generated chunk by chunk (chunk c from seed (dist, c)), so a killed
generation restarts at its first unfinished chunk and the result does not depend on where it stopped.
"""
import json
import os
import time
from pathlib import Path
from typing import Iterator, Tuple

import numpy as np

DISTRIBUTIONS = {"hard": (10_000, 1.0), "easy": (2_000, 0.6)}
CHUNK = 100_000
CACHE = Path(os.environ.get("SUPERCLIP_BENCH_CACHE", "/work/bench-cache"))


def centres(dist: str, dim: int) -> np.ndarray:
    clusters, _ = DISTRIBUTIONS[dist]
    c = np.random.default_rng([hash_name(dist), dim]).standard_normal((clusters, dim), dtype=np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def hash_name(name: str) -> int:
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little")


def chunk(dist: str, dim: int, index: int, size: int, queries: bool = False) -> np.ndarray:
    """(size, dim) float32 unit vectors: chunk ``index`` of ``dist`` (``queries``: the held-out stream)."""
    _, spread = DISTRIBUTIONS[dist]
    c = centres(dist, dim)
    rng = np.random.default_rng([hash_name(dist), dim, index, int(queries)])
    noise = rng.standard_normal((size, dim), dtype=np.float32) * (spread / dim ** 0.5)
    x = c[rng.integers(0, len(c), size)] + noise
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _open(path: Path, shape, dtype) -> np.ndarray:
    if path.exists():
        return np.load(path, mmap_mode="r+")
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
    out.flush()
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r+")


def chunks(base: np.ndarray, size: int = CHUNK) -> Iterator[Tuple[int, np.ndarray]]:
    """(start, (m, D) float32) over a float16 collection, ``size`` rows at a time."""
    for s in range(0, len(base), size):
        yield s, np.asarray(base[s:s + size], dtype=np.float32)


def exact_top(base: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """(q, k) positions of the exact top-k by inner product over ``base`` (float16, read chunk by chunk)."""
    import faiss

    scores = np.full((len(queries), k), -np.inf, np.float32)
    found = np.full((len(queries), k), -1, np.int64)
    for s, x in chunks(base):
        d, i = faiss.knn(queries, x, k, metric=faiss.METRIC_INNER_PRODUCT)
        d, i = np.concatenate([scores, d], 1), np.concatenate([found, i + s], 1)
        order = np.argsort(-d, axis=1, kind="stable")[:, :k]
        scores, found = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
    return found


def collection(dist: str, n: int, dim: int = 512, queries: int = 1000, log=print):
    """(base (n, D) float16 memmap, queries (q, D) float32, truth (q, 10) int64, folder), made if missing."""
    folder = CACHE / f"{dist}-{n}x{dim}"
    folder.mkdir(parents=True, exist_ok=True)
    progress_path = folder / "progress.json"
    done = json.loads(progress_path.read_text()) if progress_path.exists() else {"chunks": 0}
    base = _open(folder / "base.npy", (n, dim), np.float16)
    t0 = time.perf_counter()
    for c, s in enumerate(range(0, n, CHUNK)):
        if c < done["chunks"]:
            continue
        base[s:s + CHUNK] = chunk(dist, dim, c, min(CHUNK, n - s)).astype(np.float16)
        base.flush()
        done["chunks"] = c + 1
        progress_path.write_text(json.dumps(done))
        if c % 10 == 9:
            log(f"  {dist}: {s + CHUNK} / {n} vectors ({time.perf_counter() - t0:.0f} s)")
    qpath, tpath = folder / "queries.npy", folder / "truth.npy"
    if not qpath.exists():
        np.save(qpath, chunk(dist, dim, 0, queries, queries=True))
    q = np.load(qpath)
    if not tpath.exists():
        t0 = time.perf_counter()
        np.save(tpath, exact_top(np.load(folder / "base.npy", mmap_mode="r"), q))
        log(f"  {dist}: exact top-10 of {len(q)} queries over {n} vectors in {time.perf_counter() - t0:.0f} s")
    return np.load(folder / "base.npy", mmap_mode="r"), q, np.load(tpath), folder


def one_query_ms(search, queries: np.ndarray) -> np.ndarray:
    """Milliseconds of ``search(v[None])`` for each (D,) query of ``queries``, one at a time."""
    out = []
    for v in queries:
        t0 = time.perf_counter()
        search(v[None])
        out.append(1000 * (time.perf_counter() - t0))
    return np.asarray(out)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's exact top-10 found in its top-10 (both (q, 10), the same kind of ids)."""
    return float(np.mean([len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(found.tolist(), truth.tolist())]))
