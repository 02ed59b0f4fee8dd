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


def fsdp_shard(model: torch.nn.Module, blocks) -> torch.nn.Module:
    """FSDP2: ``fully_shard`` every block (the unit of all-gather), then the whole model; returns it."""
    from torch.distributed.fsdp import fully_shard

    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def full_model_state_dict(model: torch.nn.Module) -> dict:
    """The whole (unsharded) state dict on CPU, for checkpoints of an FSDP2 model; every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state_dict(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict,
                          optim_sd: dict) -> None:
    """Load whole state dicts (as :func:`full_model_state_dict` wrote them) into an FSDP2 model and optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, \
        set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_sd, options=options)
    set_optimizer_state_dict(model, optimizer, optim_sd, options=options)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (FSDP2 parameters); other tensors as they are."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
