"""The 10M folder of bench/search_10m.py searched at other (nprobe, re-ranking depth) than its build stored: how
recall@10 and latency move when the candidates, not the lists, are what is missing.

    python bench/search_10m_sweep.py [--dist easy --queries 100 --settings 16:800,16:3200,64:3200,64:6400]

One thread, one query a call, as serve searches (the index's ``search`` with overrides); recall against the exact
top-10 the benchmark's ``truth`` stage wrote. Run after ``search_10m.py`` (its folder, queries and truth).
"""
import argparse
import time

import faiss
import numpy as np
from search_data import CACHE, recall

from superclip.search.searcher import Searcher


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dist", default="easy")
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--settings", default="16:800,16:3200,64:3200,64:6400")
    args = ap.parse_args()
    folder = CACHE / f"folder-{args.dist}-{args.n}"
    faiss.omp_set_num_threads(1)
    s = Searcher(str(folder / "idx"))
    q = np.load(folder / "queries.npy")[:args.queries]
    want = np.load(folder / "truth.npy")[:args.queries]
    for setting in args.settings.split(","):
        nprobe, rerank = (int(x) for x in setting.split(":"))
        times, found = [], []
        for v in q:
            t0 = time.perf_counter()
            ids = s.main.search(v[None], 10, nprobe=nprobe, rerank=rerank)[1][0]
            times.append(1000 * (time.perf_counter() - t0))
            found.append(ids)
        print(f"nprobe {nprobe}, re-ranking {rerank}: recall@10 {recall(np.asarray(found), want):.3f}, "
              f"p50 {np.percentile(times, 50):.1f} ms, p99 {np.percentile(times, 99):.1f} ms", flush=True)


if __name__ == "__main__":
    main()
