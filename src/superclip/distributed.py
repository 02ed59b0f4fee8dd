"""The one module that talks to ``torch.distributed``. With a single process it never creates a group."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place mean over ranks (SUM then divide: gloo has no AVG). A no-op with one process."""
    n = world_size()
    if n > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(n)
    return tensor


def init_from_env(backend: str = "auto") -> tuple:
    """Join the process group torchrun describes in the environment; returns (rank, world_size, local_rank).

    Without torchrun's variables (``WORLD_SIZE`` unset or 1) nothing is initialised.
    """
    n = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if n <= 1:
        return 0, 1, local_rank
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not is_initialized():
        dist.init_process_group(backend=backend)
    return rank(), world_size(), local_rank


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def destroy() -> None:
    if is_initialized():
        dist.destroy_process_group()
