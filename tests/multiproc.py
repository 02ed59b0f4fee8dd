"""Running a function on N CPU processes joined the way torchrun joins them (env:// rendezvous), with a timeout."""
from __future__ import annotations

import os
import socket
import time

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, fn, port, world, args):
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # N processes share this machine's cores
    try:
        fn(rank, *args)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


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
