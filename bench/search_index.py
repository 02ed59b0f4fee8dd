"""The faiss index at the scale of a real collection: N clustered vectors (default 1M, dim 512; not uniform noise,
which no index can search well and no collection looks like), built with superclip.search.index.build at its
default parameters (``--max-index-memory`` 4G -> IVF over sqrt(N)-ish lists, nprobe raised until recall@10 on 1,000
of the vectors reaches 0.95).

    python bench/search_index.py [--n 1000000 --dim 512 --clusters 2000 --queries 1000]

Prints: the parameters chosen, build time, the recall@10 the build measured (queries from the data) and the recall
@10 of 1,000 held-out queries drawn from the same clusters against exact search, search latency p50 / p99 at one
thread (k = 10, one query a call), and the process's peak RSS. Then, for the exact-search threshold (FLAT_MAX),
the latency of exact search of one query at one thread over 10k..200k vectors.
"""
import argparse
import resource
import time

import faiss
import numpy as np

from superclip.search import index as faiss_index


def clustered(n: int, dim: int, clusters: int, rng: np.random.Generator, spread: float = 0.6) -> np.ndarray:
    """(n, dim) L2-normalised float32: cluster centres on the sphere plus Gaussian offsets of norm ~``spread``."""
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    step = 100_000
    for s in range(0, n, step):
        m = min(step, n - s)
        noise = rng.standard_normal((m, dim), dtype=np.float32) * (spread / dim ** 0.5)
        x = centres[rng.integers(0, clusters, m)] + noise
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def latency_ms(index, queries: np.ndarray, k: int = 10):
    times = []
    for q in queries:
        t0 = time.perf_counter()
        faiss_index.search(index, q[None], k)
        times.append(1000 * (time.perf_counter() - t0))
    return np.percentile(times, 50), np.percentile(times, 99)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=10_000)
    ap.add_argument("--spread", type=float, default=1.0, help="offset norm / centre norm: clusters overlap at 1")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--skip-flat", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    data = clustered(args.n + args.queries, args.dim, args.clusters, rng, args.spread)
    vectors, held_out = data[:args.n], data[args.n:]
    ids = np.arange(1, args.n + 1, dtype=np.int64)
    print(f"data: {args.n} x {args.dim} clustered vectors ({args.clusters} clusters, spread {args.spread}), "
          f"{time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    index, info = faiss_index.build(vectors, ids, max_memory=4 << 30)
    build_s = time.perf_counter() - t0
    print(f"index: {info['kind']}, nlist {info.get('nlist')}, nprobe {info['nprobe']}; build {build_s:.0f} s "
          f"(threads {faiss.omp_get_max_threads()}); recall@10 measured by the build {info['recall_at_10']:.4f}")
    truth = faiss_index.exact_top(vectors, held_out, 10)
    recall = faiss_index.recall_at(index, ids, held_out, truth, index.nprobe if hasattr(index, "nprobe") else 1)
    print(f"recall@10 of {args.queries} held-out queries vs exact: {recall:.4f}")
    faiss.omp_set_num_threads(1)
    p50, p99 = latency_ms(index, held_out)
    print(f"search latency, one thread, k=10: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2:.2f} GiB "
          f"(the vectors alone: {vectors.nbytes / 1024 ** 3:.2f} GiB)")
    if args.skip_flat:
        return
    for n in [m for m in (10_000, 30_000, 100_000, 200_000) if m <= args.n]:
        flat = faiss_index.flat_index(vectors[:n], ids[:n])
        p50, p99 = latency_ms(flat, held_out[:200])
        print(f"exact search over {n:>7} vectors, one thread: p50 {p50:.2f} ms, p99 {p99:.2f} ms")


if __name__ == "__main__":
    main()
