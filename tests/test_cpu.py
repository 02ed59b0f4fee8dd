"""Process settings for CPU work (superclip/cpu.py): freed memory kept for reuse, torch's threads beside the loader
workers. Each in a fresh process: both are process-wide."""
import json
import subprocess
import sys

import pytest

FAULTS = """
import json, resource, sys, torch
def faults_per_round():
    for _ in range(3):
        torch.zeros(10_000_000).add_(1)  # 40 MB, allocated and freed as a step's (V, D) gradients are
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.zeros(10_000_000).add_(1)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
plain = faults_per_round()
from superclip.cpu import keep_freed_memory
keep_freed_memory()
print(json.dumps([plain, faults_per_round()]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux")
def test_freed_memory_is_reused_without_page_faults():
    proc = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, timeout=120)
    plain, kept = json.loads(proc.stdout.strip().splitlines()[-1])
    # above glibc's largest dynamic threshold (32 MB) a freed block always goes back to the system: 40 MB are 9,766
    # pages of 4 KB to fault in again each time (a ViT-B head's weight gradient is 152 MB)
    assert plain > 5000 and kept < plain / 4, (plain, kept)  # kept: 0 (one run: 977, a single block faulted in)


THREADS = """
import json, os, sys, torch
from superclip.cpu import share_cores_with_workers
share_cores_with_workers(int(sys.argv[1]))
print(json.dumps(torch.get_num_threads()))
"""


@pytest.mark.parametrize("workers, env, expected", [
    (1, {}, "cores - 1"), (0, {}, "unchanged"), (64, {}, 1), (1, {"OMP_NUM_THREADS": "2"}, 2),
    (1, {"LOCAL_WORLD_SIZE": "64"}, 1)])
def test_torch_threads_leave_the_loader_workers_their_cores(workers, env, expected):
    import os

    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    proc = subprocess.run([sys.executable, "-c", THREADS, str(workers)], capture_output=True, text=True,
                          timeout=120, env={**base, **env})
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    cores = len(os.sched_getaffinity(0))
    want = {"cores - 1": max(1, cores - 1), "unchanged": None}.get(expected, expected)
    if want is None:  # no workers: torch's own default
        probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                               capture_output=True, text=True, env=base, timeout=120)
        want = int(probe.stdout)
    assert got == want, proc.stderr
