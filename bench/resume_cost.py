"""Time from process start to the first trained step: a fresh start vs a resume positioned 90 % into the epoch.

    python bench/resume_cost.py [--shards 200 --per-shard 500 --workers 2 --batch-size 64 --out /tmp/resume_cost]

The data: 200 shards x 500 synthetic scenes (64 px PNG, written once into --out/shards and reused). Both runs are
``python -m superclip train`` processes on SuperCLIP-Tiny; the clock runs from launching the process to the first
line of its metrics.jsonl. The resume checkpoint is the fresh run's step-1 checkpoint moved to 90 % of the
epoch: progress (step, batch in the epoch) and every loader worker's shard position set to 90 % of its shards
(what training there would have left), so the resumed process does all the work a real resume does.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import make_shards


def time_to_first_step(args: list, run: Path, finish: bool = False) -> float:
    """Seconds from launch to the first metrics line; then the process is killed, or waited for (``finish``)."""
    metrics = run / "metrics.jsonl"
    before = len(metrics.read_text().splitlines()) if metrics.exists() else 0
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "superclip", "train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    while True:
        if metrics.exists() and len(metrics.read_text().splitlines()) > before:
            elapsed = time.perf_counter() - t0
            break
        if proc.poll() is not None:
            raise RuntimeError(f"training ended without a step: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.01)
    if finish:
        if proc.wait() != 0:
            raise RuntimeError(proc.stderr.read().decode()[-2000:])
    else:
        proc.kill()
        proc.wait()
    return elapsed


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shards", type=int, default=200)
    p.add_argument("--per-shard", type=int, default=500)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--at", type=float, default=0.9, help="where in the epoch the resume starts")
    p.add_argument("--out", default="/tmp/resume_cost")
    args = p.parse_args()
    out = Path(args.out)
    pattern = make_shards(out / "shards", args.shards, args.per_shard)
    n = args.shards * args.per_shard
    logs = out / "logs"
    common = ["--train-data", pattern, "--train-num-samples", str(n), "--batch-size", str(args.batch_size),
              "--workers", str(args.workers), "--model", "SuperCLIP-Tiny", "--logs", str(logs), "--no-progress",
              "--log-every-n-steps", "1"]
    for name in ("fresh", "resumed"):
        shutil.rmtree(logs / name, ignore_errors=True)
    fresh = time_to_first_step([*common, "--name", "fresh", "--max-steps", "1"], logs / "fresh", finish=True)
    ckpt = torch.load(logs / "fresh" / "checkpoints" / "epoch_latest.pt", weights_only=True)
    steps_per_epoch = n // args.batch_size
    at = int(args.at * steps_per_epoch)
    ckpt["step"] = ckpt["batch_in_epoch"] = at
    consumers = max(1, args.workers)
    units_each = args.shards // consumers
    for state in ckpt["rank_states"]:
        state["positions"] = {w: [0, int(args.at * units_each), 0] for w in range(consumers)}
    moved = logs / "resume-at.pt"
    torch.save(ckpt, moved)
    resumed = time_to_first_step([*common, "--name", "resumed", "--resume", str(moved)], logs / "resumed")
    result = {"samples": n, "shards": args.shards, "workers": args.workers, "resume_at_step": at,
              "steps_per_epoch": steps_per_epoch, "fresh_start_s": round(fresh, 2), "resume_s": round(resumed, 2),
              "ratio": round(resumed / fresh, 3)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
