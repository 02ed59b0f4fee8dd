"""The main index at a million vectors against the field's HNSW libraries, all in one run of this script:
``superclip.search.index.build`` (what ``index build`` runs, at its default 4G budget: ``hnsw``; and forced to
``ivfpq`` by a budget of ~100 bytes a vector) against faiss ``IndexHNSWFlat``, hnswlib and usearch, each at its
defaults.

    python bench/search_index.py [--n 1000000 --dists hard,easy --peers ours,ours-ivfpq,faiss-hnsw,hnswlib,usearch]

Data (bench/search_data.py, cached): 1M x 512 float16 vectors per distribution, 1,000 held-out queries and their
exact top-10. Every build runs in a child process of its own (2 threads; ours builds its graph on one, so that a
rerun gives the same graph), reading the vectors 100k at a time from the file; the child reports its wall time and
peak RSS. A distribution's builds stay in the cache until it is measured (a killed run rebuilds only what is missing),
then are deleted (``--keep-indexes`` keeps them: a rerun then measures again without rebuilding, ``--rebuild``
redoes them).

Then, for each distribution, in this process: each index's search parameter (efSearch / expansion_search /
nprobe) is set to the smallest of a common ladder at which recall@10 of the held-out queries reaches 0.95 (ours is
also measured at the parameter its build stored), then latency p50 / p99 of one query a call at one thread and
queries/s of the 1,000 queries as one batch at two threads. Latencies are taken in ``--rounds`` rounds, each
loading every index in turn (order rotated), so that a change in the machine's load hits all of them alike.
Finally exact search (the ``flat`` kind) of one query at one thread over 4k..32k vectors.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from search_data import CHUNK, chunks, collection, recall

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
        from superclip.search import index

        source = FileSource(base_path)
        _, info = index.build(source, self.budget(source.count), folder, 0, reader=rows_reader(base_path))
        (folder / "info.json").write_text(json.dumps(info))
        return {k: info[k] for k in info if k in ("kind", "ef_search", "nprobe", "rerank", "recall_at_10", "nlist")}

    def load(self, base_path, folder):
        from superclip.search import index

        self.info = json.loads((folder / "info.json").read_text())
        self.main = index.load(folder, self.info, rows_reader(base_path))
        self.value = self.info.get(self.param)

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
        faiss.write_index(index, str(folder / "faiss.index"))
        return {"M": 32, "efConstruction": index.hnsw.efConstruction}

    def load(self, base_path, folder):
        import faiss

        self.index = faiss.read_index(str(folder / "faiss.index"))

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
        index.save_index(str(folder / "hnswlib.bin"))
        return {"M": 16, "ef_construction": 200}

    def load(self, base_path, folder):
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=512)
        self.index.load_index(str(folder / "hnswlib.bin"))

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
        index.save(str(folder / "usearch.bin"))
        return {"connectivity": index.connectivity, "expansion_add": index.expansion_add, "dtype": str(index.dtype)}

    def load(self, base_path, folder):
        from usearch.index import Index

        self.index = Index.restore(str(folder / "usearch.bin"))

    def set(self, value):
        self.index.expansion_search = value

    def batch(self, q, threads):
        return self.index.search(q, 10, threads=threads).keys.astype(np.int64)

    def one(self, v):
        return self.index.search(v, 10, threads=1)


PEERS = {"ours": Ours, "ours-ivfpq": OursIVF, "faiss-hnsw": FaissHNSW, "hnswlib": Hnswlib, "usearch": Usearch}


def rss_gib() -> float:
    """This process's resident memory now (VmRSS), GiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024 ** 2


def child_build(peer: str, base_path: Path, folder: Path) -> None:
    import faiss  # noqa: F401 - every peer's process holds the same libraries before it builds
    import hnswlib  # noqa: F401
    import usearch.index  # noqa: F401

    import superclip.search.index  # noqa: F401

    folder.mkdir(parents=True, exist_ok=True)
    before = rss_gib()
    t0 = time.perf_counter()
    params = PEERS[peer]().build(base_path, folder)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    out = {"build_s": time.perf_counter() - t0, "peak_rss_gib": peak, "imports_gib": before, "params": params}
    (folder / "build.json").write_text(json.dumps(out))


def build(peer: str, folder: Path, base_path: Path, rebuild: bool) -> dict:
    out = folder / f"index-{peer}"
    if rebuild or not (out / "build.json").exists():
        env = dict(os.environ, OMP_NUM_THREADS="2")
        done = subprocess.run([sys.executable, __file__, "--child", peer, str(base_path), str(out)], env=env)
        if done.returncode:
            sys.exit(f"the {peer} build failed")
    return json.loads((out / "build.json").read_text())


def tune(peer, q, truth) -> tuple:
    """The smallest step reaching TARGET recall on the held-out queries (else the last), and that recall."""
    for value in peer.steps:
        peer.set(value)
        r = recall(peer.batch(q, 2), truth)
        if r >= TARGET:
            break
    return value, r


def measure(names, folder, base_path, q, truth, rounds):
    times = {name: [] for name in names}
    setting = {}
    qps = {name: 0.0 for name in names}
    floor = []
    share = np.array_split(np.arange(len(q)), rounds)
    for rnd in range(rounds):
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for name in order:
            kind = name.split("@")[0]
            peer = PEERS[kind]()
            peer.load(base_path, folder / f"index-{kind}")
            if name not in setting:
                if name.endswith("@built"):
                    value = peer.value
                    peer.set(value)
                    setting[name] = (value, recall(peer.batch(q, 2), truth))
                else:
                    setting[name] = tune(peer, q, truth)
            peer.set(setting[name][0])
            for v in q[:50]:  # warm: the pages this index's searches touch
                peer.one(v)
            for i in share[rnd]:
                t0 = time.perf_counter()
                peer.one(q[i])
                times[name].append(1000 * (time.perf_counter() - t0))
            t0 = time.perf_counter()
            peer.batch(q, 2)
            qps[name] = max(qps[name], len(q) / (time.perf_counter() - t0))
            del peer
        matrix = np.asarray(base_rows(base_path, 2000), dtype=np.float32)
        for i in share[rnd]:  # the machine's own noise: a fixed ~0.1 ms of work timed the same way
            t0 = time.perf_counter()
            matrix @ q[i]
            floor.append(1000 * (time.perf_counter() - t0))
    out = {name: {"param": setting[name][0], "recall": setting[name][1], "p50": float(np.percentile(times[name], 50)),
                  "p99": float(np.percentile(times[name], 99)), "qps2": qps[name]} for name in names}
    print(f"noise floor: a 2000 x 512 matrix-vector product timed like a query: p50 {np.percentile(floor, 50):.3f} ms,"
          f" p99 {np.percentile(floor, 99):.3f} ms")
    return out


def base_rows(base_path: Path, n: int) -> np.ndarray:
    return np.load(base_path, mmap_mode="r")[:n]


def exact_latency(base, q):
    import faiss

    faiss.omp_set_num_threads(1)
    for n in (4096, 8192, 16384, 32768):
        index = faiss.IndexFlatIP(base.shape[1])
        index.add(np.asarray(base[:n], dtype=np.float32))
        t = []
        for v in q[:300]:
            t0 = time.perf_counter()
            index.search(v[None], 10)
            t.append(1000 * (time.perf_counter() - t0))
        print(f"exact search over {n:>6} x {base.shape[1]}, one thread: p50 {np.percentile(t, 50):.3f} ms, "
              f"p99 {np.percentile(t, 99):.3f} ms")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child_build(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dists", default="hard,easy")
    ap.add_argument("--peers", default="ours,ours-ivfpq,faiss-hnsw,hnswlib,usearch")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--keep-indexes", action="store_true", help="keep the built indexes (~7.5 GB a distribution at "
                    "1M) for a later run; by default a distribution's are deleted once it is measured")
    args = ap.parse_args()
    peers = args.peers.split(",")
    print(f"{os.cpu_count()} CPU cores; load average at start {os.getloadavg()[0]:.1f}", flush=True)
    for dist in args.dists.split(","):
        base, q, truth, folder = collection(dist, args.n)
        print(f"\n## {dist}: {args.n} x {base.shape[1]}, {len(q)} held-out queries", flush=True)
        need = 8 * args.n * 1024 * len(peers) // 5 + (4 << 30)  # the indexes, and 4 GB left for everyone else
        free = shutil.disk_usage(folder).free
        if free < need and not all((folder / f"index-{p}" / "build.json").exists() for p in peers):
            sys.exit(f"{folder}: the indexes need {need / 2 ** 30:.1f} GB free (with 4 GB to spare), "
                     f"{free / 2 ** 30:.1f} GB are")
        builds = {}
        for peer in peers:
            builds[peer] = build(peer, folder, folder / "base.npy", args.rebuild)
            print(f"built {peer}: {builds[peer]}", flush=True)
        names = peers + [f"{p}@built" for p in peers if p.startswith("ours")]
        got = measure(names, folder, folder / "base.npy", q, truth, args.rounds)
        fastest = min(got[n]["p50"] for n in names if not n.startswith("ours"))
        print(f"\n| {dist} | build s | peak RSS GiB (imports) | parameter | recall@10 held-out | p50 ms | p99 ms | "
              f"p50 / fastest peer | QPS, 2 threads |\n|---|---|---|---|---|---|---|---|---|")
        for name in names:
            b, g = builds[name.split("@")[0]], got[name]
            print(f"| {name} | {b['build_s']:.0f} | {b['peak_rss_gib']:.2f} ({b['imports_gib']:.2f}) | {g['param']} | "
                  f"{g['recall']:.4f} | "
                  f"{g['p50']:.3f} | {g['p99']:.3f} | {g['p50'] / fastest:.2f} | {g['qps2']:.0f} |", flush=True)
        print(f"load average now {os.getloadavg()[0]:.1f}")
        if dist == args.dists.split(",")[0]:
            exact_latency(base, q)
        if not args.keep_indexes:
            for peer in peers:
                shutil.rmtree(folder / f"index-{peer}", ignore_errors=True)


if __name__ == "__main__":
    main()
