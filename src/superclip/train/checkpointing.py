"""What a run saves and resumes: the checkpoint manager (torchtitan's shape, for one-file checkpoints).

A training checkpoint is one file written by rank 0: the model and optimizer (gathered whole from FSDP2
shards), every stateful component's ``state_dict`` (scheduler, grad scaler, loss statistics, progress), and
``rank_states``: one entry per rank with what differs between ranks, its RNG states and its position in the
data, so that every rank gets its own back on resume. A readable ``.json`` beside it describes the same step;
the file is complete when both exist and agree (each is written to a temporary file, fsynced and renamed, the
checkpoint first).

Resuming ``latest`` takes the newest complete checkpoint of the run (epoch, step or latest, by the step it
holds), reading it before trusting it: one that cannot be read is reported and the next newest is used. Rank 0
chooses and tells the others. The loop never assembles checkpoints by hand: it calls :meth:`save` at step
boundaries and :meth:`resume` once at start-up.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

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


def _nonfinite_key(state: Dict[str, torch.Tensor]) -> Optional[str]:
    """The first floating-point tensor of ``state`` holding inf or nan, or None."""
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            return key
    return None


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
        meta: constant values written into each checkpoint (config, world size).
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
    def save(self, names: Sequence[str]) -> Path:
        """Write the run's state as ``folder/names[0]``; the other names become hard links to it (copies where
        the file system has none). Every rank calls this at the same step boundary; rank 0 writes.

        A weight that is not finite is never saved (CheckpointError), nor is anything when the write fails
        (a full disk: the previous checkpoints stay as they were)."""
        path = self.folder / names[0]
        rank_states = distributed.all_gather_object(self.rank_state())
        if self.fsdp:  # gathering the shards is a collective: every rank takes part
            model_state = distributed.full_model_state_dict(self.model)
            optimizer_state = distributed.full_optimizer_state_dict(self.model, self.optimizer)
        else:
            model_state, optimizer_state = self.model.state_dict(), self.optimizer.state_dict()
        error = None
        if distributed.is_main_process():
            bad = _nonfinite_key(model_state)
            try:
                if bad is not None:
                    raise CheckpointError(f"not saving {path}: weight {bad} is not finite (the previous checkpoints "
                                          "are left as they were)")
                state = {key: c.state_dict() for key, c in self.components.items()}
                save_checkpoint(path, self.model, self.criterion, model_state=model_state,
                                optimizer=optimizer_state, rank_states=rank_states, **state,
                                **self.progress.state_dict(), **self.meta)
                for name in names[1:]:
                    for suffix in ("", ".json"):
                        _link_atomically(Path(str(path) + suffix), self.folder / (name + suffix))
            except CheckpointError as e:
                error = str(e)
            except OSError as e:
                error = (f"cannot write checkpoint {path}: {e.strerror or e} (the previous checkpoints are left as "
                         "they were)")
        error = distributed.broadcast_object(error)  # every rank stops alike
        if error:
            raise CheckpointError(error)
        return path

    def delete(self, name: str) -> None:
        if distributed.is_main_process():
            for p in (self.folder / name, self.folder / (name + ".json")):
                p.unlink(missing_ok=True)

    # --- finding and loading
    def candidates(self) -> List[Tuple[int, Path]]:
        """(step, path) of every checkpoint with its ``.json``, newest first (ties: the most recent file)."""
        found = []
        for path in self.folder.glob("*.pt"):
            try:
                step = int(json.loads(path.with_name(path.name + ".json").read_text())["step"])
                found.append((step, path.stat().st_mtime_ns, path))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # no readable description beside it: not a complete checkpoint
        return [(step, path) for step, _, path in sorted(found, reverse=True)]

    def _newest_readable(self) -> Tuple[Optional[Path], Optional[Dict[str, Any]]]:
        for step, path in self.candidates():
            try:
                ckpt = read_checkpoint(path)
            except CheckpointError as e:
                log.warning("%s; resuming from the next newest checkpoint", e)
                continue
            if ckpt.get("step") != step:
                log.warning("%s holds step %s but its .json says %d (interrupted while written); skipped",
                            path, ckpt.get("step"), step)
                continue
            return path, ckpt
        return None, None

    def resume(self, resume: Optional[str]) -> Optional[Path]:
        """Restore the state named by ``--resume``: ``latest`` (the newest complete checkpoint of this run, or a
        fresh start when there is none) or a file. Returns the checkpoint used."""
        if resume is None:
            return None
        if resume == "latest":
            path, ckpt = self._newest_readable() if distributed.is_main_process() else (None, None)
            path = distributed.broadcast_object(path)
            if path is None:
                return None
            if ckpt is None:
                ckpt = read_checkpoint(path)
        else:
            path = Path(resume)
            if path.is_dir():
                raise CheckpointError(f"--resume {path} is a folder: name a checkpoint file (such as "
                                      f"{path}/checkpoints/epoch_latest.pt), or --resume latest with this run's --name")
            if not path.is_file():
                raise CheckpointError(f"--resume checkpoint not found: {path}")
            ckpt = read_checkpoint(path)
        self.load(path, ckpt)
        return path

    def load(self, path: Path, ckpt: Dict[str, Any]) -> None:
        """Restore everything from a checkpoint ``ckpt`` read from ``path``."""
        if ckpt.get("format") != "superclip" or "optimizer" not in ckpt:
            raise CheckpointError(f"{path} is not a superclip training checkpoint (use --pretrained for weights)")
        rank_states = ckpt.get("rank_states") or [{"rng": ckpt["rng"]}]  # before per-rank state: one process's
        world = distributed.world_size()
        if len(rank_states) != world:
            raise CheckpointError(f"{path} was written by {len(rank_states)} processes, this run has {world}: "
                                  "resume with the same number of processes")
        self._check_same_run(path, ckpt)
        self.changed_settings = changed_settings(ckpt.get("train_config"), self.meta.get("train_config"))
        try:
            if self.fsdp:
                distributed.load_full_state_dicts(self.model, self.optimizer, ckpt["model"], ckpt["optimizer"])
            else:
                self.model.load_state_dict(ckpt["model"])
                self.optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as e:  # the optimizer's groups: another set of trained parameters
            raise CheckpointError(f"{path} trained another set of parameters ({str(e).splitlines()[0]}): resume with "
                                  "the --lock-image / --lock-text / --cls-loss-weight / --contrastive the run was "
                                  "started with") from None
        self.criterion.load_state_dict(ckpt["loss"])
        for key, component in self.components.items():
            if ckpt.get(key) is not None:
                component.load_state_dict(ckpt[key])
        self.progress.load_state_dict(ckpt)
        self.load_rank_state(rank_states[distributed.rank()])

    changed_settings: List[Tuple[str, Any, Any]] = []

    def _check_same_run(self, path: Path, ckpt: Dict[str, Any]) -> None:
        """A checkpoint of another model or batch shape is a one-line error naming what differs."""
        where = _first_difference(ckpt.get("config"), getattr(self.model, "config", None))
        if where is not None:
            raise CheckpointError(f"{path} holds another model: its config differs at {where} (resume with the "
                                  "--model the run was started with, or use --pretrained to start from its weights)")
        saved, now = ckpt.get("train_config") or {}, self.meta.get("train_config") or {}
        for key in ("batch_size", "accum_freq"):
            if key in saved and key in now and saved[key] != now[key]:
                raise CheckpointError(f"{path} was trained with --{key.replace('_', '-')} {saved[key]}, this run "
                                      f"has {now[key]}: resume with the same value")

    def remove_temporary_files(self) -> None:
        """Leftovers of writes a kill interrupted (``*.tmp``); rank 0 only."""
        if distributed.is_main_process() and self.folder.is_dir():
            for tmp in self.folder.glob("*.tmp"):
                tmp.unlink(missing_ok=True)


# settings that differ on every resume, or only say how to start one
_NOT_SETTINGS = ("resume",)


def changed_settings(saved: Optional[Dict[str, Any]], now: Optional[Dict[str, Any]]) -> List[Tuple[str, Any, Any]]:
    """(field, checkpoint's value, this run's value) for each training setting a resume changes; fields the
    checkpoint does not record (an older version's) are left out."""
    if not saved or not now:
        return []
    return [(key, saved[key], now[key]) for key in now
            if key not in _NOT_SETTINGS and key in saved and saved[key] != now[key]]


def describe_changes(changes: List[Tuple[str, Any, Any]]) -> str:
    """``--lr 10.0 -> 0.001, --epochs 2 -> 4``."""
    return ", ".join(f"--{key.replace('_', '-')} {old} -> {new}" for key, old, new in changes)


def _first_difference(a: Any, b: Any, where: str = "") -> Optional[str]:
    """The first key path where two (nested) config dicts differ, with both values, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
            if found:
                return found
        return None
    return None if a == b else f"{where or 'the top'} ({a!r} in the checkpoint, {b!r} now)"


def _link_atomically(src: Path, dst: Path) -> None:
    """``dst`` becomes the same file as ``src`` (a hard link, else a copy), replacing it atomically."""
    tmp = dst.with_name(dst.name + f".{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


# --- signal-safe step boundaries
class StopSignals:
    """SIGINT / SIGTERM ask the run to stop at the next step boundary (``requested`` holds the signal); a second
    one exits at once, without touching checkpoints. Installed only in the main thread."""

    def __init__(self):
        self.requested: Optional[int] = None
        self.previous = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            os._exit(128 + signum)
        self.requested = signum
        log.warning("%s: stopping after this step (a second signal exits at once)", signal.Signals(signum).name)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def ignore_stop_signals(worker_id: int) -> None:
    """Data-loader workers leave SIGINT / SIGTERM to the main process, which stops at a step boundary (a worker
    killed by them would otherwise fail the step in progress)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
