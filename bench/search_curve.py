"""Why a graph is slow on a distribution: recall@10 of held-out queries, distances computed a query and latency
against efSearch, for our ``hnsw`` kind (faiss HNSW over fp16 codes, 32 neighbours a node) built at two
efConstruction values (ours, 40, and hnswlib's default, 200), on a smaller collection than bench/search_index.py's
so that it runs in minutes.

    python bench/search_curve.py [--n 100000 --dists hard,easy --ef-construction 40,200]

Data: bench/search_data.py (cached). Each graph is built on one thread, as ``index build`` builds it. For each
efSearch of a ladder (stopping once recall@10 reaches 0.99): recall@10 of the 1,000 held-out queries against exact
search, faiss's count of distances computed a query (``hnsw_stats.ndis``), p50 / p99 latency of one query a call at
one thread (300 queries), and the time of the same number of distances as plain dot products over the collection
(``ndis`` x 512 multiply-adds at the measured rate of a (1000, 512) x (512,) product), which says whether the time
goes to distances or to the graph walk.
"""
import argparse
import os
import time

import faiss
import numpy as np
from search_data import chunks, collection, one_query_ms, recall

LADDER = (16, 32, 64, 128, 256, 512, 1024, 2048)


def build(base, ef_construction: int) -> faiss.Index:
    index = faiss.IndexHNSWSQ(base.shape[1], faiss.ScalarQuantizer.QT_fp16, 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    faiss.omp_set_num_threads(1)
    for _, x in chunks(base):
        index.add(x)
    return index


def per_distance_ms(base) -> float:
    """Milliseconds of one 512-d dot product, measured as a (1000, D) block times one query."""
    m = np.asarray(base[:1000], dtype=np.float32)
    q = m[0].copy()
    t = []
    for _ in range(300):
        t0 = time.perf_counter()
        m @ q
        t.append(time.perf_counter() - t0)
    return 1000 * float(np.median(t)) / len(m)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dists", default="hard,easy")
    ap.add_argument("--ef-construction", default="40,200")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPU cores; load average {os.getloadavg()[0]:.1f}", flush=True)
    for dist in args.dists.split(","):
        base, q, truth, _ = collection(dist, args.n)
        dot = per_distance_ms(base)
        print(f"\n| {dist} {args.n} x {base.shape[1]} | efC | build s | efSearch | recall@10 | distances a query | "
              f"p50 ms | p99 ms | the distances as dot products, ms |\n|---|---|---|---|---|---|---|---|---|",
              flush=True)
        for efc in [int(x) for x in args.ef_construction.split(",")]:
            t0 = time.perf_counter()
            index = build(base, efc)
            built = time.perf_counter() - t0
            faiss.omp_set_num_threads(1)
            for ef in LADDER:
                index.hnsw.efSearch = ef
                faiss.cvar.hnsw_stats.reset()
                found = index.search(q, 10)[1]
                ndis = faiss.cvar.hnsw_stats.ndis / len(q)
                r = recall(found, truth)
                t = one_query_ms(lambda x: index.search(x, 10), q[:300])
                print(f"| | {efc} | {built:.0f} | {ef} | {r:.4f} | {ndis:.0f} | {np.percentile(t, 50):.3f} | "
                      f"{np.percentile(t, 99):.3f} | {ndis * dot:.3f} |", flush=True)
                if r >= 0.99:
                    break
            index = None  # freed before the next graph is built
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
