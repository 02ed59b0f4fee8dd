"""Running a function on N CPU processes joined the way torchrun joins them (env:// rendezvous), with a timeout."""
from __future__ import annotations

import faulthandler
import os
import socket
import sys
import time

import torch
import torch.multiprocessing as mp

from superclip import distributed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, fn, port, world, args):
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # N processes share this machine's cores
    faulthandler.enable(all_threads=True)  # a rank that aborts (SIGABRT from C++) prints every thread's stack
    try:
        fn(rank, *args)
    finally:
        distributed.destroy()
    # The rank's results are on disk: it leaves without interpreter teardown, where the C++ threads torch started
    # (gloo's, and the 8 pt_autograd threads FSDP2's backward starts on CPU) meet Python's finalization. In CI a
    # rank of the evaluation runs died of SIGABRT ("terminate called without an active exception", a C++
    # thread's way out during teardown; a SIGABRT had been seen once before); 19 repeats of those runs here (6
    # beside a busy core) did not reproduce it, so where it died is not known: faulthandler (above) prints every
    # thread's stack if a rank aborts again.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(fn, *args, nprocs: int = 2, timeout: float = 300.0) -> None:
    """Run ``fn(rank, *args)`` on ``nprocs`` spawned processes; fail (and kill them) after ``timeout`` seconds."""
    ctx = mp.start_processes(_entry, args=(fn, free_port(), nprocs, args), nprocs=nprocs, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise TimeoutError(f"{nprocs} processes did not finish within {timeout:.0f} s (a hang or deadlock)")
