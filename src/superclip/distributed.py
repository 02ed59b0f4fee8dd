"""The one module that talks to ``torch.distributed``: the process group, collectives, DDP / FSDP2 wrapping,
gradient-sync contexts and the gathers of evaluation. With a single process it never creates a group.

Collectives and devices: a process group serves a tensor only on a device type it has a backend for (NCCL
cannot reduce a CPU tensor). The group is created with a backend per device type in use (``cpu:gloo`` always,
for object collectives and CPU tensors, plus ``cuda:nccl`` on GPUs), and every collective here first checks
that its tensor's device has one (:func:`check_device`), so a mistake is one clear error, not a hang.
"""
from __future__ import annotations

import contextlib
import gc
import importlib
import os
import sys
from typing import Any, Dict, List

import torch
import torch.distributed as dist

from .errors import ConfigError

# accelerator device type -> the collective backend for its tensors
_DEVICE_BACKENDS = {"cuda": "nccl", "xpu": "xccl"}


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


def backend_config(device_type: str) -> str:
    """The ``init_process_group`` backend string for training on ``device_type``: gloo for CPU tensors (and
    object collectives) always, plus the accelerator's own backend (``cpu:gloo,cuda:nccl``)."""
    if device_type == "cpu":
        return "cpu:gloo"
    return f"cpu:gloo,{device_type}:{_DEVICE_BACKENDS.get(device_type, 'gloo')}"


def group_backends() -> Dict[str, str]:
    """Device type -> backend of the default group (``{}`` without one). A plain ``gloo`` group serves both
    cpu and cuda; ``nccl`` alone serves cuda only."""
    if not is_initialized():
        return {}
    pairs = (p.split(":") for p in dist.get_backend_config().split(","))
    return {device: backend for device, backend in pairs}


def check_device(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, after checking that the group has a backend for its device (else a clear RuntimeError)."""
    backends = group_backends()
    if backends and tensor.device.type not in backends:
        raise RuntimeError(f"a collective was handed a {tensor.device.type} tensor, but the process group has "
                           f"backends only for {', '.join(sorted(backends))} ({dist.get_backend_config()})")
    return tensor


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def restart_count() -> int:
    """How many times torchrun restarted this job (``--max-restarts``); 0 outside torchrun."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def launched_distributed() -> bool:
    """Started by torchrun (even with one process), or with ``WORLD_SIZE`` > 1 in the environment."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and "RANK" not in os.environ:
        raise ConfigError(f"WORLD_SIZE is {world} but RANK is not set: launch with torchrun")
    return world > 1 or ("TORCHELASTIC_RUN_ID" in os.environ and "RANK" in os.environ)


def init_from_env(device_type: str = "cpu") -> tuple:
    """Join the process group torchrun describes in the environment, with a backend for CPU tensors and one
    for ``device_type``'s; returns (rank, world_size). A plain ``python`` / ``superclip`` process creates no
    group; a torchrun launch always joins one, also with one process (its collectives then run on the
    group's backends, as with more). A group made beforehand (tests, notebooks) is used as it is."""
    if not launched_distributed() and not is_initialized():
        return 0, 1
    if not is_initialized():
        kwargs = {"device_id": torch.device(device_type, local_rank())} if device_type == "cuda" else {}
        restart = restart_count()
        if restart:
            # torchrun keeps its store across restarts: the killed attempt's addresses are still in it, and a
            # restarted rank reading one would try a dead peer until it times out; each attempt gets its own keys
            store, rank_, world = next(dist.rendezvous("env://"))
            kwargs.update(store=dist.PrefixStore(f"superclip/attempt-{restart}", store), rank=rank_,
                          world_size=world)
        dist.init_process_group(backend=backend_config(device_type), **kwargs)
    return rank(), world_size()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def destroy() -> None:
    """Leave the process group and let its backends stop now, while the interpreter is whole.

    ``destroy_process_group`` only empties torch's registry of groups; a group is shut down (gloo joins its
    worker and socket threads) when the last reference to it goes. After FSDP2, DTensor's sharding and
    redistribution caches hold its device mesh, and through the mesh the groups, for the life of the process:
    measured here, a rank's ``pt_gloo_runloop`` / ``gloo_tcp_loop`` threads were still running after
    ``destroy_process_group``, into interpreter teardown. Those caches are emptied here (what the run still
    references, e.g. a live FSDP model, keeps its groups until it goes)."""
    had_group = is_initialized()
    if had_group:
        dist.destroy_process_group()
    if had_group:  # a device mesh needs a group: without one there is nothing to let go (and no 0.3 s collection)
        _clear_dtensor_caches()
        gc.collect()


def _clear_dtensor_caches() -> None:
    """Empty DTensor's process-wide caches, whose keys hold device meshes (torch-internal: each one only where
    this torch has it)."""
    if "torch.distributed.tensor" not in sys.modules:  # no DTensor was ever made: nothing cached
        return

    def find(module: str, *names: str):
        try:
            obj = importlib.import_module(f"torch.distributed.tensor.{module}")
        except ImportError:
            return None
        for name in names:
            obj = getattr(obj, name, None)
        return obj

    for clear in (find("debug", "_clear_sharding_prop_cache"),
                  find("_redistribute", "clear_redistribute_planner_cache"),
                  find("_redistribute", "_gen_transform_infos", "cache_clear"),
                  find("_collective_utils", "MeshTopoInfo", "build_from_mesh", "cache_clear")):
        if clear is not None:
            clear()


# --- collectives (no-ops without a process group; with one, they run even for a single process)
def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In place over ranks: ``sum`` or ``mean`` (SUM then divide: gloo has no AVG)."""
    if is_initialized():
        check_device(tensor)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        if op == "mean":
            tensor.div_(world_size())
    return tensor


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    return all_reduce_(tensor, "mean")


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """(n, ...) on every rank (the same n) -> (world_size x n, ...), rank 0's rows first."""
    if not is_initialized():
        return tensor
    n = world_size()
    check_device(tensor)
    out = torch.empty((n * tensor.shape[0], *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    dist.all_gather_into_tensor(out, tensor.contiguous())
    return out


def all_gather_object(obj: Any) -> List[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank (through the group's CPU backend)."""
    if not is_initialized():
        return [obj]
    out: List[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# --- wrapping and gradient synchronisation
def wrap_ddp(model: torch.nn.Module, device: torch.device, static_graph: bool = False,
             sync_batchnorm: bool = False) -> torch.nn.Module:
    """DistributedDataParallel over ``model`` (which keeps its own parameters: checkpoints read ``model``);
    ``sync_batchnorm``: BatchNorm layers become SyncBatchNorm (same parameters), as open_clip's --use-bn-sync."""
    from torch.nn.parallel import DistributedDataParallel

    if sync_batchnorm:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   static_graph=static_graph)


def is_fsdp(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(getattr(model, "_orig_mod", model), FSDPModule)


@contextlib.contextmanager
def no_sync(model: torch.nn.Module, enabled: bool = True):
    """Gradients accumulate locally inside (no all-reduce / reduce-scatter) when ``enabled``: DDP's
    ``no_sync``, FSDP2's ``set_requires_gradient_sync(False)``; a no-op for an unwrapped model."""
    if not enabled:
        yield
        return
    inner = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    if is_fsdp(inner):
        inner.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            inner.set_requires_gradient_sync(True)
    elif hasattr(inner, "no_sync"):
        with inner.no_sync():
            yield
    else:
        yield


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
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_sd, options=options)
    set_optimizer_state_dict(model, optimizer, optim_sd, options=options)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (FSDP2 parameters); other tensors as they are."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
