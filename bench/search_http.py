"""HTTP end to end: ``superclip serve`` of this checkout against today's server (the code of ``--baseline``, run from
a ``git archive`` of it) on the same index, all running at once, driven in turn by wrk over loopback.

    python bench/search_http.py [--models SuperCLIP-Tiny,SuperCLIP-ViT-B-32 --images 256 --concurrency 1,8,32
                                 --duration 15 --baseline 52f02f9 --workers 1,default]

For each model (random weights, seeded: the cost of a request does not depend on them): ``--images`` synthetic
scenes at the model's input size indexed by ``superclip index build``; then, for text queries (GET /api/search?q=
two random words&k=20) and image uploads (POST /api/search/image, one PNG scene, k=20) at each concurrency, wrk
(one thread, ``-c`` connections, ``--duration`` seconds, 30 s timeout) runs against today's server, then ours (one
server for each of ``--workers``' counts: ``serve --workers N``, or serve's default; the order rotates from one
setting to the next; today's server without httptools and uvloop, as it was installed,
unless ``--baseline-fast-http``). Prints latency p50 / p99 and requests/s as wrk reports them (every
request of the run), non-2xx answers and socket errors, and the ratio of requests/s. Needs wrk (apt-get install
wrk).

``--profile text:8`` (a kind and a concurrency) also samples our server with py-spy while wrk runs that setting, and
prints where its time went (the functions with the most samples of their own, and the share of a few stages) and
what it cost: the server's CPU time per request against the request's wall time, and how busy the machine's cores
were, by the server and by everything else (/proc).
"""
import argparse
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from search_embed import model_and_images

TEXT_LUA = """math.randomseed(7)
local words = {"red", "blue", "green", "yellow", "purple", "circle", "square", "triangle", "large", "small"}
request = function()
  return wrk.format("GET", "/api/search?k=20&q=a+" .. words[math.random(#words)] .. "+" .. words[math.random(#words)])
end
"""
IMAGE_LUA = """local f = io.open("{body}", "rb")
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.path = "/api/search/image"
wrk.headers["Content-Type"] = "multipart/form-data; boundary={boundary}"
"""
BOUNDARY = "superclipbench7d1f"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(index: Path, pythonpath, log: Path, extra=()):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(pythonpath)) if pythonpath else dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "superclip", "serve", str(index), "--port", str(port), *extra],
                            env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/health")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"the server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.3)


def upload_body(image: Path, out: Path) -> Path:
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n20\r\n--{BOUNDARY}\r\n"
            f"Content-Disposition: form-data; name=\"file\"; filename=\"{image.name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + image.read_bytes() + f"\r\n--{BOUNDARY}--\r\n".encode()
    out.write_bytes(body)
    return out


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def wrk(port: int, script: Path, connections: int, duration: int) -> dict:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "30s", "--latency", "-s",
                          str(script), f"http://127.0.0.1:{port}"], capture_output=True, text=True, check=True).stdout

    def latency(pct):
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")

    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"p50": latency(50), "p99": latency(99), "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "non2xx": int((re.search(r"Non-2xx or 3xx responses: (\d+)", out) or [0, 0])[1]),
            "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0}


def family(pid: int) -> list:
    """``pid`` and its descendants (``serve --workers N``: a parent and N worker processes)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += family(int(child))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its descendants (every thread) so far."""
    total = 0
    for p in family(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def busy_seconds() -> tuple:
    """(busy, total) CPU seconds of the machine so far, every core (/proc/stat)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK"), sum(ticks) / os.sysconf("SC_CLK_TCK")


STAGES = {"model pass (batcher)": "_encode", "tokenizer": "tokenize", "faiss search": "search (superclip/search/index",
          "catalog lookups (SQLite)": "items (superclip/search/catalog", "reload check": "reload_if_changed",
          "JSON response": "render", "HTTP (uvicorn h11)": "h11", "event loop": "run_forever"}


def profiled(pid: int, port: int, script: Path, connections: int, duration: int, out: Path) -> dict:
    """wrk against our server while py-spy samples it; prints the profile, returns wrk's figures."""
    raw = out / f"profile-c{connections}.txt"
    spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")  # pip install py-spy
    spy = subprocess.Popen([spy_bin, "record", "--pid", str(pid), "--duration", str(duration), "--rate", "250",
                            "--format", "raw", "--output", str(raw), "--nonblocking", "--subprocesses"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cpu0, (busy0, all0) = cpu_seconds(pid), busy_seconds()
    r = wrk(port, script, connections, duration)
    cpu1, (busy1, all1) = cpu_seconds(pid), busy_seconds()
    spy.wait(60)
    own, stages, total = {}, dict.fromkeys(STAGES, 0), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        leaf = stack.split(";")[-1]
        own[leaf] = own.get(leaf, 0) + n
        for name, needle in STAGES.items():
            if needle in stack:
                stages[name] += n
    server = cpu1 - cpu0
    per_request, cores = 1000 * server / r["requests"], all1 - all0
    print(f"\nprofile of our server, c={connections}, {r['requests']} requests: server CPU {per_request:.2f} ms a "
          f"request (p50 wall {r['p50']:.1f} ms); the machine's cores {100 * (busy1 - busy0) / cores:.0f}% busy, "
          f"{100 * server / cores:.0f}% of them by this server; py-spy samples (threads not idle): {total}")
    for name, n in stages.items():
        print(f"  {name}: {100 * n / max(total, 1):.1f}% of samples")
    for leaf, n in sorted(own.items(), key=lambda x: -x[1])[:12]:
        print(f"  own {100 * n / max(total, 1):5.1f}%  {leaf}")
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="SuperCLIP-Tiny,SuperCLIP-ViT-B-32")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--kinds", default="text,image")
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--baseline", default="52f02f9", help="the commit whose server is today's (main before issue 26)")
    ap.add_argument("--out", default="/tmp/search_http")
    ap.add_argument("--profile", default=None, help="KIND:C, e.g. text:8: sample our server under that setting")
    ap.add_argument("--workers", default="default",
                    help="our server's --workers, a comma-separated list of counts, each a server of its own ('default': "
                         "serve's own choice); e.g. 1,default")
    ap.add_argument("--baseline-fast-http", action="store_true",
                    help="let today's server use httptools and uvloop too (by default it runs as it was installed, "
                         "without them: the search extra gained them with the async endpoints)")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    out = Path(args.out)
    old_src = out / f"baseline-{args.baseline}"
    if not (old_src / "src").is_dir():
        old_src.mkdir(parents=True, exist_ok=True)
        repo = Path(__file__).resolve().parent.parent
        archive = subprocess.run(["git", "-C", str(repo), "archive", args.baseline, "src"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old_src)], input=archive, check=True)
    (out / "text.lua").write_text(TEXT_LUA)
    baseline_path = str(old_src / "src")
    if not args.baseline_fast_http:  # modules that fail to import: uvicorn then picks h11 and asyncio's loop
        plain = out / "without-httptools-uvloop"
        plain.mkdir(parents=True, exist_ok=True)
        for name in ("httptools", "uvloop"):
            (plain / f"{name}.py").write_text(f"raise ImportError('{name}: not installed in the baseline')\n")
        baseline_path = f"{plain}{os.pathsep}{baseline_path}"
    print(f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; wrk 1 thread, {args.duration} s a run; "
          f"today's server: {args.baseline}", flush=True)
    results = {}
    for model in args.models.split(","):
        folder = out / model
        _, size, ckpt, paths = model_and_images(model, folder, args.images)
        index = folder / "idx"
        if not (index / "manifest.json").exists():
            subprocess.run([sys.executable, "-m", "superclip", "index", "build", str(folder / "images"), "--out",
                            str(index), "--pretrained", str(ckpt), "--no-progress"], check=True)
        body = upload_body(paths[3], folder / "upload.body")
        (folder / "image.lua").write_text(IMAGE_LUA.format(body=body, boundary=BOUNDARY))
        servers = {"today": serve(index, baseline_path, folder / "serve-today.log")}
        ours = []
        for w in args.workers.split(","):
            name = "ours" if w == "default" else f"ours-w{w}"
            servers[name] = serve(index, None, folder / f"serve-{name}.log", () if w == "default" else ("--workers", w))
            ours.append(name)
        try:
            for name, (_, port) in servers.items():  # warm-up: first model calls, first pages
                wrk(port, out / "text.lua", 1, 2)
                wrk(port, folder / "image.lua", 1, 2)
            step = 0
            for kind in args.kinds.split(","):
                script = out / "text.lua" if kind == "text" else folder / "image.lua"
                for c in [int(x) for x in args.concurrency.split(",")]:
                    names = list(servers)
                    order = names[step % len(names):] + names[:step % len(names)]
                    step += 1
                    for name in order:
                        r = wrk(servers[name][1], script, c, args.duration)
                        results[(model, kind, c, name)] = r
                        print(f"{model} {kind} c={c} {name}: {json.dumps(r)}", flush=True)
            if args.profile:
                kind, c = args.profile.split(":")
                script = out / "text.lua" if kind == "text" else folder / "image.lua"
                proc, port = servers[ours[-1]]
                profiled(proc.pid, port, script, int(c), args.duration, folder)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(30)
        for name in ours:
            print(f"\n| {model}, {name} | concurrency | today p50 / p99 ms | today req/s | {name} p50 / p99 ms | "
                  f"{name} req/s | req/s {name} / today | errors (today, {name}) |\n|---|---|---|---|---|---|---|---|")
            for kind in args.kinds.split(","):
                for c in [int(x) for x in args.concurrency.split(",")]:
                    t, o = results[(model, kind, c, "today")], results[(model, kind, c, name)]
                    print(f"| {kind} | {c} | {t['p50']:.1f} / {t['p99']:.1f} | {t['rps']:.1f} | {o['p50']:.1f} / "
                          f"{o['p99']:.1f} | {o['rps']:.1f} | **{o['rps'] / t['rps']:.2f}** | "
                          f"{t['non2xx'] + t['socket_errors']}, {o['non2xx'] + o['socket_errors']} |", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
