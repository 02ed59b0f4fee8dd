"""The main index at a million vectors against the field's HNSW libraries, all in one run of this script:
``superclip.search.index.build`` (what ``index build`` runs, at its default 4G budget: ``hnsw``; and forced to
``ivfpq`` by a budget of ~100 bytes a vector) against faiss ``IndexHNSWFlat``, hnswlib and usearch, each at its
defaults.

    python bench/search_index.py [--n 1000000 --dists hard,easy --peers ours,ours-ivfpq,faiss-hnsw,hnswlib,usearch]

Data (bench/search_data.py, cached): 1M x 512 float16 vectors per distribution, 1,000 held-out queries and their
exact top-10. Each index is built and measured in a child process of its own (2 threads; ours builds its graph on
one, so that a rerun gives the same graph), reading the vectors 100k at a time from the file, and nothing it built
is kept (the indexes of one distribution would take ~7.5 GB of a shared disk): wall time and peak RSS of the build;
then the search parameter (efSearch / expansion_search / nprobe) set to the smallest of a common ladder at which
recall@10 of the held-out queries reaches 0.95 (ours also at the parameter its build stored); latency p50 / p99 of
one query a call at one thread, ``--rounds`` x 500 queries, in blocks of 50 alternating with 50 timings of a fixed
~0.05 ms of work (the machine's noise floor while this index was measured); queries/s of the 1,000 queries as one
batch at two threads. A child's result is kept (result-PEER.json): a killed run redoes only the missing ones
(``--again`` redoes all). Finally exact search (the ``flat`` kind) of one query at one thread over 4k..32k vectors.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from search_data import CHUNK, chunks, collection, one_query_ms, recall

STEPS = (10, 12, 16, 20, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640,
         768, 1024, 1536, 2048)
PROBES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
TARGET = 0.95


def rows_reader(base_path: Path):
    """locations (part << 32 | row, parts of CHUNK rows) -> float32 vectors, pread from the one base file."""
    from superclip.search.ivf import PartRows

    reader = PartRows(lambda part: base_path)
    return lambda locs: reader((np.asarray(locs) >> 32) * CHUNK + (np.asarray(locs) & 0xFFFFFFFF))


class FileSource:
    """The collection as ``index.build`` reads a folder: parts of CHUNK rows, each read when asked for."""

    def __init__(self, path: Path):
        self.path = path
        base = np.load(path, mmap_mode="r")
        self.count, self.dim = base.shape
        self.dtype = base.dtype

    def parts(self):
        for p, s in enumerate(range(0, self.count, CHUNK)):
            e = min(self.count, s + CHUNK)
            yield p, np.arange(s, e, dtype=np.int64), np.arange(e - s, dtype=np.int64)

    def vectors(self, part, rows):
        base = np.load(self.path, mmap_mode="r")  # mapped for this read only: the build's RSS holds no file pages
        return np.asarray(base[part * CHUNK + rows], dtype=np.float32)


# ----------------------------------------------------------------------------- the peers


class Ours:
    param, steps = "ef_search", STEPS

    def budget(self, n):
        return 4 << 30  # index build's default --max-index-memory

    def build(self, base_path, folder):
        """``index build``'s index stage (its files in ``folder``), then the index loaded as ``serve`` loads it."""
        from superclip.search import index

        source = FileSource(base_path)
        _, info = index.build(source, self.budget(source.count), folder, 0, reader=rows_reader(base_path))
        self.main = index.load(folder, info, rows_reader(base_path))
        self.value = info.get(self.param)
        return {k: info[k] for k in info if k in ("kind", "ef_search", "nprobe", "rerank", "recall_at_10", "nlist")}

    def set(self, value):
        self.value = value

    def batch(self, q, threads):
        import faiss

        faiss.omp_set_num_threads(threads)
        return self.main.search(q, 10, **{self.param: self.value})[1]

    def one(self, v):
        return self.main.search(v[None], 10, **{self.param: self.value})


class OursIVF(Ours):
    param, steps = "nprobe", PROBES

    def budget(self, n):
        return 100 * n + (8 << 20)  # ~100 bytes a vector (103M at 1M): the graph would not fit, IVF-PQ does


class FaissHNSW:
    param, steps = "efSearch", STEPS

    def build(self, base_path, folder):
        import faiss

        index = faiss.IndexHNSWFlat(512, 32, faiss.METRIC_INNER_PRODUCT)  # efConstruction: faiss's default 40
        for _, x in chunks(np.load(base_path, mmap_mode="r")):
            index.add(x)
        self.index = index
        return {"M": 32, "efConstruction": index.hnsw.efConstruction}

    def set(self, value):
        self.index.hnsw.efSearch = value

    def batch(self, q, threads):
        import faiss

        faiss.omp_set_num_threads(threads)
        return self.index.search(q, 10)[1]

    def one(self, v):
        return self.index.search(v[None], 10)


class Hnswlib:
    param, steps = "ef", STEPS

    def build(self, base_path, folder):
        import hnswlib

        base = np.load(base_path, mmap_mode="r")
        index = hnswlib.Index(space="ip", dim=base.shape[1])
        index.init_index(max_elements=len(base))  # M 16, ef_construction 200: its defaults
        for s, x in chunks(base):
            index.add_items(x, np.arange(s, s + len(x)), num_threads=2)
        self.index = index
        return {"M": 16, "ef_construction": 200}

    def set(self, value):
        self.index.set_ef(value)

    def batch(self, q, threads):
        return self.index.knn_query(q, 10, num_threads=threads)[0].astype(np.int64)

    def one(self, v):
        return self.index.knn_query(v[None], 10, num_threads=1)


class Usearch:
    param, steps = "expansion_search", STEPS

    def build(self, base_path, folder):
        from usearch.index import Index

        index = Index(ndim=512, metric="ip")  # its defaults: connectivity 16, expansion_add 128, bf16 storage
        for s, x in chunks(np.load(base_path, mmap_mode="r")):
            index.add(np.arange(s, s + len(x)), x, threads=2)
        self.index = index
        return {"connectivity": index.connectivity, "expansion_add": index.expansion_add, "dtype": str(index.dtype)}

    def set(self, value):
        self.index.expansion_search = value

    def batch(self, q, threads):
        return self.index.search(q, 10, threads=threads).keys.astype(np.int64)

    def one(self, v):
        return self.index.search(v, 10, threads=1)


PEERS = {"ours": Ours, "ours-ivfpq": OursIVF, "faiss-hnsw": FaissHNSW, "hnswlib": Hnswlib, "usearch": Usearch}


def rss_gib(field: str = "VmRSS") -> float:
    """This process's resident memory now (VmRSS) or its peak (VmHWM), GiB. The peak is read from /proc, not from
    getrusage: ru_maxrss survives exec, so a child would report its parent's peak when that was larger."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024 ** 2


def tune(peer, q, truth) -> tuple:
    """The smallest step reaching TARGET recall on the held-out queries (else the last), and that recall."""
    for value in peer.steps:
        peer.set(value)
        r = recall(peer.batch(q, 2), truth)
        if r >= TARGET:
            break
    return value, r


def child(peer_name: str, folder: Path, rounds: int) -> None:
    """Build one index, then measure it, in this process; its result as JSON in ``folder``/result-PEER.json."""
    import faiss
    import hnswlib  # noqa: F401 - every index's process holds the same libraries before it builds
    import usearch.index  # noqa: F401

    import superclip.search.index  # noqa: F401

    base_path, q, truth = folder / "base.npy", np.load(folder / "queries.npy"), np.load(folder / "truth.npy")
    work = folder / f"index-{peer_name}"
    work.mkdir(parents=True, exist_ok=True)
    before = rss_gib()
    t0 = time.perf_counter()
    peer = PEERS[peer_name]()
    params = peer.build(base_path, work)
    out = {"build_s": time.perf_counter() - t0, "peak_rss_gib": rss_gib("VmHWM"), "imports_gib": before, "params": params, "load_average": os.getloadavg()[0], "rows": {}}
    settings = {peer_name: tune(peer, q, truth)}
    if peer_name.startswith("ours"):
        peer.set(params.get(peer.param))
        settings[f"{peer_name}@built"] = (params.get(peer.param), recall(peer.batch(q, 2), truth))
    faiss.omp_set_num_threads(1)
    matrix = np.asarray(np.load(base_path, mmap_mode="r")[:1000], dtype=np.float32)
    for name, (value, rec) in settings.items():
        peer.set(value)
        for v in q[:50]:  # warm: the pages these searches touch
            peer.one(v)
        times, floor = [], []
        for block in np.array_split(np.arange(500 * rounds), 10 * rounds):
            for i in block:
                t1 = time.perf_counter()
                peer.one(q[i % len(q)])
                times.append(1000 * (time.perf_counter() - t1))
            for i in block:
                t1 = time.perf_counter()
                matrix @ q[i % len(q)]
                floor.append(1000 * (time.perf_counter() - t1))
        qps = 0.0
        for _ in range(3):
            t1 = time.perf_counter()
            peer.batch(q, 2)
            qps = max(qps, len(q) / (time.perf_counter() - t1))
        ndis = None
        if peer_name in ("ours", "faiss-hnsw"):  # distances a query computes, faiss's own count
            faiss.cvar.hnsw_stats.reset()
            peer.batch(q, 1)
            ndis = faiss.cvar.hnsw_stats.ndis / len(q)
        out["rows"][name] = {"param": value, "recall": rec, "ndis": ndis, "p50": float(np.percentile(times, 50)),
                             "p99": float(np.percentile(times, 99)), "floor_p50": float(np.percentile(floor, 50)),
                             "floor_p99": float(np.percentile(floor, 99)), "qps2": qps}
    del peer
    shutil.rmtree(work, ignore_errors=True)
    (folder / f"result-{peer_name}.json").write_text(json.dumps(out))


def run(peer: str, folder: Path, rounds: int, again: bool) -> dict:
    result = folder / f"result-{peer}.json"
    if again or not result.exists():
        shutil.rmtree(folder / f"index-{peer}", ignore_errors=True)  # what a killed child left
        env = dict(os.environ, OMP_NUM_THREADS="2")
        done = subprocess.run([sys.executable, __file__, "--child", peer, str(folder), str(rounds)], env=env)
        if done.returncode:
            sys.exit(f"the {peer} run failed")
    return json.loads(result.read_text())


def exact_latency(base, q):
    import faiss

    faiss.omp_set_num_threads(1)
    for n in (4096, 8192, 16384, 32768):
        index = faiss.IndexFlatIP(base.shape[1])
        index.add(np.asarray(base[:n], dtype=np.float32))
        t = one_query_ms(lambda x: index.search(x, 10), q[:300])
        print(f"exact search over {n:>6} x {base.shape[1]}, one thread: p50 {np.percentile(t, 50):.3f} ms, "
              f"p99 {np.percentile(t, 99):.3f} ms")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dists", default="hard,easy")
    ap.add_argument("--peers", default="ours,ours-ivfpq,faiss-hnsw,hnswlib,usearch")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--again", action="store_true", help="redo every index, not only those without a result")
    args = ap.parse_args()
    peers = args.peers.split(",")
    print(f"{os.cpu_count()} CPU cores; load average at start {os.getloadavg()[0]:.1f}", flush=True)
    for dist in args.dists.split(","):
        base, q, truth, folder = collection(dist, args.n)
        print(f"\n## {dist}: {args.n} x {base.shape[1]}, {len(q)} held-out queries", flush=True)
        got = {}
        for peer in peers:
            got[peer] = run(peer, folder, args.rounds, args.again)
            print(f"{peer}: {json.dumps(got[peer])}", flush=True)
        rows = {name: (got[peer], row) for peer in peers for name, row in got[peer]["rows"].items()}
        # against the fastest peer of the run (ours alone, --peers ours: against itself)
        others = [r for name, (_, r) in rows.items() if not name.startswith("ours")] or [r for _, r in rows.values()]
        fastest, fastest99 = min(r["p50"] for r in others), min(r["p99"] for r in others)
        print(f"\n| {dist} | build s | peak RSS GiB (after imports) | parameter | recall@10 held-out | p50 ms | "
              f"p99 ms | p50, p99 / fastest peer's | noise floor p50 / p99 ms | QPS, 2 threads |\n"
              f"|---|---|---|---|---|---|---|---|---|---|")
        for name, (b, g) in rows.items():
            print(f"| {name} | {b['build_s']:.0f} | {b['peak_rss_gib']:.2f} ({b['imports_gib']:.2f}) | {g['param']} | "
                  f"{g['recall']:.4f} | {g['p50']:.3f} | {g['p99']:.3f} | "
                  f"{g['p50'] / fastest:.2f}, {g['p99'] / fastest99:.2f} | "
                  f"{g['floor_p50']:.3f} / {g['floor_p99']:.3f} | {g['qps2']:.0f} |", flush=True)
        print(f"load average now {os.getloadavg()[0]:.1f}")
        if dist == args.dists.split(",")[0]:
            exact_latency(base, q)


if __name__ == "__main__":
    main()
