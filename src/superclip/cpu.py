"""How a CPU process runs best here: torch's threads beside the data-loader workers, and freed memory kept for reuse.
Process-wide settings, so the command line applies them (``superclip train``, ``demo``, ``index build``), not the
library."""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

import torch

log = logging.getLogger(__name__)

def cores() -> int:
    """The cores this process may run on (its affinity), else the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def share_cores_with_workers(workers: int) -> None:
    """On the CPU, this process's torch threads and its ``workers`` data-loader processes share the machine's
    cores (divided among torchrun's processes on this machine): torch keeps to what the workers leave, at least
    one. Left alone, torch takes every core and the workers' decoding fights it: measured on 2 cores with one
    worker, a tiny model trained 320 samples/s with 2 threads and 384 with 1 (bench/startup.py); the search job's
    embedding 28 images/s against 43. An ``OMP_NUM_THREADS`` the user set wins (torchrun sets 1 for N > 1)."""
    if workers <= 0 or "OMP_NUM_THREADS" in os.environ:
        return
    per_process = max(1, cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    torch.set_num_threads(max(1, per_process - workers))


def keep_freed_memory() -> None:
    """Tell glibc's malloc to keep freed memory for the next allocation instead of handing it back to the system.

    A training step on the CPU allocates and frees the same large tensors every step (the head's (B, V) logits and
    gradient, its (V, D) weight gradient, the token embedding's dense (V, D) gradient). glibc returns blocks above
    its mmap threshold to the system when they are freed, and the next step faults every page in again: measured
    on the tests' tiny model at batch 32, 8,011 page faults a step and 71 ms; with the thresholds raised, none and
    54 ms (bench/startup.py's model). The memory stays with the process at its peak, which a training run reaches
    every step anyway. Not glibc: nothing is done."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    # blocks up to 1 GiB from the heap (a ViT-L head's weight gradient is 200 MB), never trimmed; an older glibc
    # takes at most 32 MiB
    ok = (mallopt(m_mmap_threshold, 2 ** 30) or mallopt(m_mmap_threshold, 2 ** 25)) and \
        mallopt(m_trim_threshold, 2 ** 31 - 1)
    if not ok:
        log.debug("glibc's mallopt refused the thresholds: freed memory goes back to the system as usual")
