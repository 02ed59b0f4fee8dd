"""What a run saves and resumes: the checkpoint manager (torchtitan's shape, for one-file checkpoints).

A training checkpoint is one file written by rank 0: the model and optimizer (gathered whole from FSDP2
shards), every stateful component's ``state_dict`` (scheduler, grad scaler, loss statistics, progress), and
``rank_states``: one entry per rank with what differs between ranks, its RNG states and its position in the
data, so that every rank gets its own back on resume. A readable ``.json`` beside it describes the same step.

The loop never assembles checkpoints by hand: it calls :meth:`CheckpointManager.save` at step boundaries and
:meth:`CheckpointManager.load` once at start-up.
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol

import numpy as np
import torch

from .. import distributed
from ..checkpoint import read_checkpoint, save_checkpoint
from ..errors import CheckpointError

log = logging.getLogger(__name__)


class Stateful(Protocol):
    def state_dict(self) -> Dict[str, Any]: ...

    def load_state_dict(self, state: Dict[str, Any]) -> None: ...


def rng_state(device: torch.device) -> Dict[str, Any]:
    """This process's RNG states as tensors and plain values (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    cuda = state.get("cuda")
    if device.type == "cuda" and isinstance(cuda, torch.Tensor):
        torch.cuda.set_rng_state(cuda, device)


class CheckpointManager:
    """Saves and restores a run's whole state.

    Args:
        folder: the run's ``checkpoints/`` folder.
        model, optimizer: saved whole; with ``fsdp`` gathered from (and loaded back into) the shards.
        criterion: the loss, whose state is the IDF statistics (``loss`` in the file, as in every checkpoint).
        progress: plain values (step, epoch, ...), written at the top level of the file and in its ``.json``.
        components: name -> object with ``state_dict`` / ``load_state_dict``, the same on every rank
            (scheduler, grad scaler).
        rank_state: returns this rank's own state (RNG, data position); ``load_rank_state`` takes it back.
        meta: constant plain values written into each checkpoint and its ``.json`` (config, world size).
    """

    def __init__(self, folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 criterion: torch.nn.Module, progress: Stateful, components: Dict[str, Optional[Stateful]],
                 rank_state: Callable[[], Dict[str, Any]], load_rank_state: Callable[[Dict[str, Any]], None],
                 fsdp: bool = False, meta: Optional[Dict[str, Any]] = None):
        self.folder = Path(folder)
        self.model, self.optimizer, self.criterion, self.progress = model, optimizer, criterion, progress
        self.components = {k: c for k, c in components.items() if c is not None}
        self.rank_state, self.load_rank_state = rank_state, load_rank_state
        self.fsdp = fsdp
        self.meta = meta or {}

    # --- saving
    def save(self, name: str) -> Path:
        """Write ``folder/name`` (every rank calls this at the same step boundary; rank 0 writes)."""
        path = self.folder / name
        rank_states = distributed.all_gather_object(self.rank_state())
        if self.fsdp:  # gathering the shards is a collective: every rank takes part
            model_state = distributed.full_model_state_dict(self.model)
            optimizer_state = distributed.full_optimizer_state_dict(self.model, self.optimizer)
        else:
            model_state, optimizer_state = None, self.optimizer.state_dict()
        if distributed.is_main_process():
            state = {key: c.state_dict() for key, c in self.components.items()}
            save_checkpoint(path, self.model, self.criterion, model_state=model_state, optimizer=optimizer_state,
                            rank_states=rank_states, **state, **self.progress.state_dict(), **self.meta)
        distributed.barrier()
        return path

    def delete(self, name: str) -> None:
        if distributed.is_main_process():
            for p in (self.folder / name, self.folder / (name + ".json")):
                p.unlink(missing_ok=True)

    # --- loading
    def load(self, path: Path) -> Dict[str, Any]:
        """Restore everything from ``path``; returns the checkpoint's meta values."""
        ckpt = read_checkpoint(path)
        if ckpt.get("format") != "superclip" or "optimizer" not in ckpt:
            raise CheckpointError(f"{path} is not a superclip training checkpoint (use --pretrained for weights)")
        rank_states = ckpt.get("rank_states") or [  # written before per-rank state: one process's
            {"rng": ckpt["rng"], "raw_consumed": ckpt.get("raw_consumed", [])}]
        world = distributed.world_size()
        if len(rank_states) != world:
            raise CheckpointError(f"{path} was written by {len(rank_states)} processes, this run has {world}: "
                                  "resume with the same number of processes")
        if self.fsdp:
            distributed.load_full_state_dicts(self.model, self.optimizer, ckpt["model"], ckpt["optimizer"])
        else:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        self.criterion.load_state_dict(ckpt["loss"])
        for key, component in self.components.items():
            if ckpt.get(key) is not None:
                component.load_state_dict(ckpt[key])
        self.progress.load_state_dict(ckpt)
        self.load_rank_state(rank_states[distributed.rank()])
        return ckpt

    def latest(self) -> Optional[Path]:
        """The newest checkpoint in the folder (by the step it holds), or None."""
        found: List[tuple] = []
        for path in self.folder.glob("*.pt"):
            meta = path.with_name(path.name + ".json")
            try:
                step = json.loads(meta.read_text())["step"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            found.append((step, path.stat().st_mtime, path))
        return max(found)[2] if found else None
