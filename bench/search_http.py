"""HTTP text queries end to end against ``superclip serve`` over loopback: a bounded load run at concurrency 4.

    python bench/search_http.py [--images 256 --requests 100 --concurrency 4 --model SuperCLIP-Tiny]

An index of ``--images`` synthetic scenes (random-weight ``--model``; the query path's cost does not depend on the
weights) is built, ``superclip serve`` is started as its own process, and ``--concurrency`` client threads each
send ``--requests`` GET /api/search?q=...&k=20 (one keep-alive connection per thread, queries varied). Prints
latency p50 / p99 (ms) per request, requests/s, and the count of non-200 answers and connection errors.
"""
import argparse
import http.client
import json
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
from search_embed import model_and_images


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client(port: int, n: int, seed: int, latencies: list, errors: list) -> None:
    rng = random.Random(seed)
    words = ["red", "blue", "green", "yellow", "purple", "circle", "square", "triangle", "large", "small"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(n):
        q = urllib.parse.quote(f"a {rng.choice(words)} {rng.choice(words)}")
        t0 = time.perf_counter()
        try:
            conn.request("GET", f"/api/search?q={q}&k=20")
            r = conn.getresponse()
            body = r.read()
            if r.status != 200 or len(json.loads(body)["results"]) != 20:
                errors.append(r.status)
        except (OSError, http.client.HTTPException) as e:
            errors.append(repr(e))
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        latencies.append(1000 * (time.perf_counter() - t0))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--requests", type=int, default=100, help="per client")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--model", default="SuperCLIP-Tiny")
    ap.add_argument("--out", default="/tmp/search_http")
    args = ap.parse_args()
    out = Path(args.out)
    model_and_images(args.model, out, args.images)
    if not (out / "idx" / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "superclip", "index", "build", str(out / "images"), "--out",
                        str(out / "idx"), "--pretrained", str(out / "model.pt"), "--no-progress"], check=True)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "superclip", "serve", str(out / "idx"), "--port", str(port)],
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/api/health")
                break
            except OSError:
                time.sleep(0.2)
        client(port, 10, 99, [], [])  # warm-up: first model calls
        latencies, errors = [], []
        threads = [threading.Thread(target=client, args=(port, args.requests, i, latencies, errors))
                   for i in range(args.concurrency)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(30)
    lat = np.asarray(latencies)
    print(f"{len(lat)} text queries over loopback at concurrency {args.concurrency}, index of {args.images} images "
          f"({args.model}): p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms, "
          f"{len(lat) / wall:.1f} requests/s, {len(errors)} errors")


if __name__ == "__main__":
    main()
