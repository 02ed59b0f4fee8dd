"""Why a distribution is hard for an inverted-file index: how far down a query's ranking of the lists its exact
top-10 lie, for the coarse quantizer ``index build`` trains (superclip.search.ivf.train: spherical k-means on
``train_per_list`` vectors a list) and for the same quantizer trained on other numbers of vectors a list.

    python bench/search_why.py [--n 1000000 --dists hard,easy --per-list 40,160]

For each distribution and training size: every vector assigned to its nearest centroid (exactly), then for each
held-out query the lists ranked by the query's similarity to their centroids; printed: the share of the queries'
exact top-10 lying in the query's first 1, 8, 64, 256 lists, the nprobe whose lists hold 95 % of the top-10 (what
recall 0.95 costs at the least, before PQ's own error), and how many vectors those lists hold (the codes a query
scans).
"""
import argparse
import time

import faiss
import numpy as np
from search_data import chunks, collection

from superclip.search import ivf
from superclip.search.index import ArraySource, nlist_for, pq_m_for


def probes_for(ranks: np.ndarray, share: float) -> int:
    """The smallest nprobe whose first lists hold ``share`` of the queries' top-10 on average: ``ranks`` (q, 10) are
    the rank (0-based) of the list of each neighbour in its query's order of the lists."""
    return int(np.quantile(ranks.ravel(), share, method="inverted_cdf")) + 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dists", default="hard,easy")
    ap.add_argument("--per-list", default="40,160", help="training vectors a list (index build: 160 up to 1,024 lists)")
    args = ap.parse_args()
    for dist in args.dists.split(","):
        base, q, truth, _ = collection(dist, args.n)
        nlist = nlist_for(len(base))
        for per_list in [int(x) for x in args.per_list.split(",")]:
            t0 = time.perf_counter()
            ivf.train_per_list = lambda nlist, per_list=per_list: per_list
            index = ivf.train(ArraySource(base), {"nlist": nlist, "m": pq_m_for(base.shape[1])},
                              np.random.default_rng(0))
            centroids = faiss.downcast_index(index.quantizer).storage.reconstruct_n(0, nlist)
            trained = time.perf_counter() - t0
            assign = np.concatenate([faiss.knn(x, centroids, 1, metric=faiss.METRIC_INNER_PRODUCT)[1][:, 0]
                                     for _, x in chunks(base)])
            sizes = np.bincount(assign, minlength=nlist)
            order = np.argsort(-(q @ centroids.T), axis=1)  # each query's lists, best first
            rank_of = np.empty_like(order)
            rank_of[np.arange(len(q))[:, None], order] = np.arange(nlist)[None, :]
            ranks = rank_of[np.arange(len(q))[:, None], assign[truth]]  # (q, 10)
            within = {p: float(np.mean(ranks < p)) for p in (1, 8, 64, 256) if p <= nlist}
            need = probes_for(ranks, 0.95)
            scanned = sizes[order[:, :need]].sum(axis=1)
            print(f"{dist}, {len(base)} x {base.shape[1]}, {nlist} lists trained on {per_list} vectors a list "
                  f"({trained:.0f} s): top-10 within the first "
                  + ", ".join(f"{p}: {100 * v:.1f} %" for p, v in within.items())
                  + f"; nprobe holding 95 % of the top-10: {need} of {nlist} (vectors in them: median "
                  f"{np.median(scanned):.0f}, {100 * np.median(scanned) / len(base):.1f} % of the collection)",
                  flush=True)


if __name__ == "__main__":
    main()
