"""Our graph (faiss HNSW over fp16 codes, what ``index build`` stores) against faiss ``IndexHNSWFlat`` (float32) with
the same construction (32 neighbours, efConstruction 40), at the same efSearch, latencies taken in alternating
blocks so that both see the same machine: the cost of reading fp16 codes instead of float32 vectors.

    python bench/search_fp16.py [--n 100000 --dist hard --ef 128 --rounds 10]

Both built on 2 threads (the build's thread count does not change a query's cost). Prints recall@10 of the 1,000
held-out queries, p50 / p99 of one query a call at one thread (``--rounds`` blocks of 100 queries each) and the
ratio.
"""
import argparse
import os
import time

import faiss
import numpy as np
from search_data import chunks, collection, one_query_ms, recall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dist", default="hard")
    ap.add_argument("--ef", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    base, q, truth, _ = collection(args.dist, args.n)
    dim = base.shape[1]
    indexes = {"ours (HNSW, fp16 codes)": faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, 32,
                                                              faiss.METRIC_INNER_PRODUCT),
               "faiss IndexHNSWFlat (float32)": faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)}
    faiss.omp_set_num_threads(2)
    for name, index in indexes.items():
        index.hnsw.efConstruction = 40
        t0 = time.perf_counter()
        for _, x in chunks(base):
            index.add(x)
        index.hnsw.efSearch = args.ef
        print(f"{name}: built in {time.perf_counter() - t0:.0f} s (2 threads), recall@10 at efSearch {args.ef}: "
              f"{recall(index.search(q, 10)[1], truth):.4f}", flush=True)
    faiss.omp_set_num_threads(1)
    times = {name: [] for name in indexes}
    for r in range(args.rounds):
        block = q[(r * 100) % len(q):(r * 100) % len(q) + 100]
        for name, index in (indexes.items() if r % 2 == 0 else reversed(indexes.items())):
            times[name].append(one_query_ms(lambda x: index.search(x, 10), block))
    p50 = {}
    for name, t in times.items():
        t = np.concatenate(t)
        p50[name] = np.percentile(t, 50)
        print(f"{name}: p50 {p50[name]:.3f} ms, p99 {np.percentile(t, 99):.3f} ms ({len(t)} queries)")
    a, b = list(p50.values())
    print(f"p50 ours / faiss IndexHNSWFlat: {a / b:.2f}; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
