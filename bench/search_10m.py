"""Ten million vectors on this machine: an index folder of 10M x 512 float16 embeddings (parts of 10,000 as
``index build`` writes them, a catalog of 10M items), its main index built by ``superclip index optimize`` within
the default 4G budget (``ivfpq``: trained on a sample, encoded part by part, inverted lists memory-mapped), then
searched as ``serve`` searches (superclip.search.searcher.Searcher, one query a call, one thread).

    python bench/search_10m.py [--n 10000000 --dist hard --budget 4G --stage all]

Stage by stage, each resumable and skipped once done (state in CACHE/folder-DIST-N/bench.json), so the command can be
killed and rerun: ``parts`` (synthetic embeddings written as parts, no model run), ``ingest`` (the catalog, one
transaction a part), ``index`` (``superclip index optimize`` as a child process: wall time summed over attempts and
its peak RSS from wait4), ``truth`` (exact top-10 of 1,000 held-out queries over every part), ``serve`` (a child
process for each of ``--readers`` (how re-ranking rows are read: one ``pread`` a row, or the parts mapped, as serve
does): Searcher loads the folder, 1,000 queries, twice; recall@10 against exact search, latency p50 / p99 of the
second pass, its resident memory split into anonymous and file-backed pages). ``--stage NAME`` runs up to NAME.
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
from search_data import CACHE, chunk, recall

STAGES = ["parts", "ingest", "index", "truth", "serve"]
PART = 10_000


def state_of(folder: Path) -> dict:
    path = folder / "bench.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save_state(folder: Path, state: dict) -> None:
    tmp = folder / "bench.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, folder / "bench.json")


def write_parts(root: Path, n: int, dist: str) -> None:
    """Parts of PART synthetic vectors each (chunk c of the distribution), with the metadata a build writes."""
    from superclip.search import parts
    from superclip.search.job import PartResult
    from superclip.search.layout import FORMAT, VERSION, Layout, write_json

    layout = Layout(root)
    root.mkdir(parents=True, exist_ok=True)
    planned = -(-n // PART)
    if not layout.manifest.exists():
        for i in range(planned):
            s = i * PART
            write_json(layout.plan(i), {"files": [f"/s/{j}" for j in range(s, min(n, s + PART))]})
        layout.write_manifest({"format": FORMAT, "version": VERSION, "model": "synthetic", "pretrained": None,
                               "checkpoint_sha256": None, "dim": 512, "sources": ["/synthetic"],
                               "dtype": "float16", "top_k": 1, "part_size": PART, "planned": planned, "parts": {}})
    t0 = time.perf_counter()
    for i in range(planned):
        if parts.is_done(layout, i):
            continue
        s = i * PART
        m = min(n, s + PART) - s
        names = [f"/s/{j}" for j in range(s, s + m)]  # short strings: the catalog of 10M items stays ~1 GB
        columns = {"image_path": names, "source": [""] * m, "shard_index": [-1] * m, "size": [1] * m,
                   "mtime": [0.0] * m, "sha256": [f"{j:x}" for j in range(s, s + m)],
                   "tags": [[f"t{j % 100}"] for j in range(s, s + m)], "tag_probs": [[1.0]] * m,
                   "image_path_bytes": [None] * m, "thumb_offset": [None] * m, "thumb_size": [None] * m}
        parts.write_part(layout, i, PartResult(chunk(dist, 512, i, m).astype(np.float16), columns, []))
        if i % 50 == 49:
            print(f"  parts: {i + 1} / {planned} ({time.perf_counter() - t0:.0f} s)", flush=True)


def ingest(root: Path) -> None:
    from superclip.search.catalog import Catalog
    from superclip.search.collection import ingest as ingest_parts
    from superclip.search.layout import Layout

    layout = Layout(root)
    catalog = Catalog(layout.catalog)
    try:
        ingest_parts(layout, catalog, layout.read_manifest())
    finally:
        catalog.close()


def run_child(cmd) -> tuple:
    """(exit code, wall seconds, peak RSS GiB) of a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss / 1024 ** 2


def truth(root: Path, queries: np.ndarray) -> np.ndarray:
    """(q, 10) ids (1-based catalog ids: part i row r is id i * PART + r + 1) of the exact top-10."""
    import faiss

    from superclip.search import parts
    from superclip.search.layout import Layout

    layout = Layout(root)
    planned = layout.read_manifest()["planned"]
    scores = np.full((len(queries), 10), -np.inf, np.float32)
    found = np.full((len(queries), 10), -1, np.int64)
    t0 = time.perf_counter()
    for i in range(planned):
        x = np.asarray(parts.read_embeddings(layout, i), dtype=np.float32)
        d, j = faiss.knn(queries, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
        d, j = np.concatenate([scores, d], 1), np.concatenate([found, j + i * PART + 1], 1)
        order = np.argsort(-d, axis=1, kind="stable")[:, :10]
        scores, found = np.take_along_axis(d, order, 1), np.take_along_axis(j, order, 1)
        if i % 100 == 99:
            print(f"  truth: {i + 1} / {planned} parts ({time.perf_counter() - t0:.0f} s)", flush=True)
    return found


def serve_child(root: str, queries_path: str, truth_path: str, count: str = "1000", reader: str = "mapped") -> None:
    """In a child: what ``serve`` holds and how fast it answers, printed as one JSON line; ``reader``: how the
    re-ranking rows are read (``mapped``: serve's; ``pread``: one system call a row, as before)."""
    import faiss

    from superclip.search.searcher import Searcher

    faiss.omp_set_num_threads(1)
    t0 = time.perf_counter()
    s = Searcher(root, mapped=reader == "mapped")
    load_s = time.perf_counter() - t0
    q, want = np.load(queries_path)[:int(count)], np.load(truth_path)[:int(count)]
    passes = []
    for _ in range(2):
        times, found = [], []
        for v in q:
            t0 = time.perf_counter()
            hits = s.search(v, 10)
            times.append(1000 * (time.perf_counter() - t0))
            found.append([h[0] for h in hits] + [-1] * (10 - len(hits)))
        passes.append({"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
                       "recall_at_10": recall(np.asarray(found), want)})
    with open("/proc/self/status") as f:
        mem = {k: int(v.split()[0]) / 1024 ** 2 for k, v in (line.split(":", 1) for line in f)
               if k in ("VmRSS", "RssAnon", "RssFile", "VmHWM")}
    info = s.manifest["index"]
    print(json.dumps({"reader": reader, "load_s": load_s, "passes": passes, "mem_gib": mem,
                      "index": {k: info.get(k) for k in ("kind", "nlist", "m", "nprobe", "rerank", "recall_at_10")}}))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-child":
        return serve_child(*sys.argv[2:7])
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--dist", default="hard")
    ap.add_argument("--budget", default="4G")
    ap.add_argument("--stage", default="serve", choices=STAGES, help="run the stages up to this one")
    ap.add_argument("--serve-queries", type=int, default=1000,
                    help="held-out queries the serve stage times (fewer when each scans many lists)")
    ap.add_argument("--readers", default="pread,mapped",
                    help="the serve stage once for each way of reading re-ranking rows, each in a child of its own")
    args = ap.parse_args()
    folder = CACHE / f"folder-{args.dist}-{args.n}"
    root = folder / "idx"
    folder.mkdir(parents=True, exist_ok=True)
    state = state_of(folder)
    print(f"{args.n} x 512 ({args.dist}) in {root}; load average {os.getloadavg()[0]:.1f}; done before: "
          f"{[s for s in STAGES if s in state]}", flush=True)
    need = args.n * 512 * 2 * 1.35 + (6 << 30)  # parts, catalog, codes, index; and 6 GB left for everyone else
    if "parts" not in state and shutil.disk_usage(folder).free < need:
        sys.exit(f"{folder}: {args.n} vectors need {need / 2 ** 30:.0f} GB free (6 to spare), "
                 f"{shutil.disk_usage(folder).free / 2 ** 30:.0f} GB are")
    for stage in STAGES[:STAGES.index(args.stage) + 1]:
        if stage in state:
            continue
        t0 = time.perf_counter()
        if stage == "parts":
            write_parts(root, args.n, args.dist)
        elif stage == "ingest":
            ingest(root)
        elif stage == "index":
            attempts = state.get("index_attempts", [])
            rc, wall, peak = run_child([sys.executable, "-m", "superclip", "index", "optimize", str(root),
                                        "--max-index-memory", args.budget])
            attempts.append({"rc": rc, "wall_s": wall, "peak_rss_gib": peak})
            state["index_attempts"] = attempts
            save_state(folder, state)
            if rc:
                sys.exit(f"superclip index optimize exited {rc}: rerun this command to continue the build")
        elif stage == "truth":
            q = chunk(args.dist, 512, 0, 1000, queries=True)
            np.save(folder / "queries.npy", q)
            np.save(folder / "truth.npy", truth(root, q))
        elif stage == "serve":
            results = []
            for reader in args.readers.split(","):
                out = subprocess.run([sys.executable, __file__, "--serve-child", str(root), str(folder / "queries.npy"),
                                      str(folder / "truth.npy"), str(args.serve_queries), reader],
                                     capture_output=True, text=True)
                if out.returncode:
                    sys.exit(out.stderr[-3000:])
                results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            state["serve_results"] = results
        state[stage] = {"seconds": time.perf_counter() - t0, "load_average": os.getloadavg()[0]}
        save_state(folder, state)
        print(f"{stage}: done in {state[stage]['seconds']:.0f} s", flush=True)
    build = state.get("index_attempts", [])
    if build:
        print(f"index build: {sum(a['wall_s'] for a in build):.0f} s over {len(build)} attempt(s), peak RSS "
              f"{max(a['peak_rss_gib'] for a in build):.2f} GiB (budget {args.budget})")
    for r in state.get("serve_results", [state["serve_result"]] if "serve_result" in state else []):
        last = r["passes"][-1]
        print(f"serve ({r.get('reader', 'pread')} rows): index {r['index']}; load {r['load_s']:.1f} s; recall@10 {last['recall_at_10']:.4f}; "
              f"p50 {last['p50_ms']:.2f} ms, p99 {last['p99_ms']:.2f} ms (first pass: p50 "
              f"{r['passes'][0]['p50_ms']:.2f}, p99 {r['passes'][0]['p99_ms']:.2f}); RSS {r['mem_gib']}")


if __name__ == "__main__":
    main()
