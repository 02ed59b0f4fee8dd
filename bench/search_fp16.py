"""Our graph (faiss HNSW over fp16 codes, what ``index build`` stores) against faiss ``IndexHNSWFlat`` (float32,
the same construction: 32 neighbours, efConstruction 40), hnswlib and usearch (their defaults), each at the smallest
efSearch of a ladder reaching recall@10 0.95 on the held-out queries, latencies taken in alternating blocks so that
all see the same machine (bench/search_index.py measures each index in its own process, minutes apart, which on a
shared machine can differ by 10x in the noise floor).

    python bench/search_fp16.py [--n 100000 --dist hard --rounds 10 --peers ours,faiss,hnswlib,usearch]

``ours-m16`` / ``ours-m16-efc40``: our fp16 graph built with hnswlib's 16 neighbours a node, at its efConstruction
(200) and at ours (40), to tell which of the two construction settings makes a difference in latency.

Built on 2 threads (the build's thread count does not change a query's cost). Prints each index's efSearch and
recall@10, p50 / p99 of one query a call at one thread (``--rounds`` blocks of 100 queries each), and p50 / p99
against the fastest peer's.
"""
import argparse
import os
import time

import faiss
import numpy as np
from search_data import chunks, collection, one_query_ms, recall

LADDER = (16, 24, 32, 48, 64, 80, 96, 128, 160, 192, 256, 384, 512, 768, 1024, 2048)


class Faiss:
    def __init__(self, dim, fp16, m=32, ef_construction=40):
        self.index = (faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, m, faiss.METRIC_INNER_PRODUCT) if fp16
                      else faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT))
        self.index.hnsw.efConstruction = ef_construction

    def add(self, start, x):
        self.index.add(x)

    def set(self, ef):
        self.index.hnsw.efSearch = ef

    def search(self, x):
        return self.index.search(x, 10)[1]


class Hnswlib:
    def __init__(self, dim, n):
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=dim)
        self.index.init_index(max_elements=n)  # M 16, ef_construction 200: its defaults

    def add(self, start, x):
        self.index.add_items(x, np.arange(start, start + len(x)), num_threads=2)

    def set(self, ef):
        self.index.set_ef(ef)

    def search(self, x):
        return self.index.knn_query(x, 10, num_threads=1)[0].astype(np.int64)


class Usearch:
    def __init__(self, dim):
        from usearch.index import Index

        self.index = Index(ndim=dim, metric="ip")  # connectivity 16, expansion_add 128, bf16: its defaults

    def add(self, start, x):
        self.index.add(np.arange(start, start + len(x)), x, threads=2)

    def set(self, ef):
        self.index.expansion_search = ef

    def search(self, x):
        return np.atleast_2d(self.index.search(x, 10, threads=1).keys).astype(np.int64)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dist", default="hard")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--peers", default="ours,faiss,hnswlib,usearch")
    args = ap.parse_args()
    base, q, truth, _ = collection(args.dist, args.n)
    dim = base.shape[1]
    make = {"ours": lambda: Faiss(dim, True), "faiss": lambda: Faiss(dim, False),
            # our fp16 graph with hnswlib's construction (M 16, efConstruction 200): which makes the difference
            "ours-m16": lambda: Faiss(dim, True, 16, 200), "ours-m16-efc40": lambda: Faiss(dim, True, 16, 40),
            "hnswlib": lambda: Hnswlib(dim, len(base)), "usearch": lambda: Usearch(dim)}
    indexes = {}
    faiss.omp_set_num_threads(2)
    for name in args.peers.split(","):
        index = make[name]()
        t0 = time.perf_counter()
        for start, x in chunks(base):
            index.add(start, x)
        built = time.perf_counter() - t0
        for ef in LADDER:
            index.set(ef)
            r = recall(np.concatenate([index.search(q[s:s + 100]) for s in range(0, len(q), 100)]), truth)
            if r >= 0.95:
                break
        indexes[name] = index
        print(f"{name}: built in {built:.0f} s (2 threads); efSearch {ef}: recall@10 {r:.4f}", flush=True)
    faiss.omp_set_num_threads(1)
    times = {name: [] for name in indexes}
    names = list(indexes)
    for r in range(args.rounds):
        block = q[(r * 100) % len(q):(r * 100) % len(q) + 100]
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(one_query_ms(indexes[name].search, block))
    got = {name: (np.percentile(np.concatenate(t), 50), np.percentile(np.concatenate(t), 99))
           for name, t in times.items()}
    peers = [v for name, v in got.items() if not name.startswith("ours")]
    best50, best99 = min(p[0] for p in peers), min(p[1] for p in peers)
    for name, (p50, p99) in got.items():
        print(f"{name}: p50 {p50:.3f} ms, p99 {p99:.3f} ms; / the fastest peer's: {p50 / best50:.2f}, "
              f"{p99 / best99:.2f}")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
