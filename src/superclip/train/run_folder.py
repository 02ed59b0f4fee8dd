"""A run's folder: its name (open_clip's unique default, stable across torchrun restarts), the rule that an
existing run is never overwritten, and ``metrics.jsonl`` (read, and cut back to the step a run resumes from)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List

from .. import distributed
from ..checkpoint import atomic_write_text
from ..config import TrainConfig
from ..errors import ConfigError


def run_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.logs) / cfg.name


def default_name(cfg: TrainConfig) -> str:
    """open_clip_train's unique run name: date-time, model, learning rate, batch size, precision."""
    model = Path(cfg.model).stem if str(cfg.model).endswith(".json") else str(cfg.model).replace("/", "-")
    return "-".join([time.strftime("%Y_%m_%d-%H_%M_%S"), f"model_{model}", f"lr_{cfg.lr:g}",
                     f"b_{cfg.batch_size}", f"p_{cfg.precision}"])


def settle_name(cfg: TrainConfig) -> None:
    """Give a run without ``--name`` its unique default name, the same on every rank and, under torchrun, the
    same after an elastic restart (remembered in ``{logs}/.run-names/{TORCHELASTIC_RUN_ID}``)."""
    if cfg.name:
        return
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    marker = Path(cfg.logs) / ".run-names" / run_id if run_id else None
    name = None
    if distributed.is_main_process():
        if marker is not None and distributed.restart_count() > 0 and marker.is_file():
            name = marker.read_text().strip()
        if name is None:
            name = base = default_name(cfg)
            for n in range(2, 1000):  # two runs started in the same second get their own folders
                if not (Path(cfg.logs) / name).exists():
                    break
                name = f"{base}-{n}"
        if marker is not None:
            try:
                atomic_write_text(name + "\n", marker)
            except OSError:
                pass  # an unwritable --logs is reported by check_run_folder, in one line
    cfg.name = distributed.broadcast_object(name)


def check_run_folder(cfg: TrainConfig) -> None:
    """A run folder is never overwritten: checkpoints there and no --resume is refused; the folder must be
    writable. Rank 0 looks, every rank raises alike."""
    error = None
    if distributed.is_main_process():
        folder = run_dir(cfg)
        if cfg.resume is None and any((folder / "checkpoints").glob("*.pt")):
            error = (f"run folder {folder} already holds checkpoints: continue that run with --resume latest, or "
                     "start a new one with another --name")
        else:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                probe = folder / f".write-test-{os.getpid()}"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as e:
                error = f"cannot write to the run folder {folder}: {e.strerror or e} (--logs / --name)"
    error = distributed.broadcast_object(error)
    if error:
        raise ConfigError(error)


def read_metrics(path: Path) -> List[Dict[str, Any]]:
    """The lines of a run's ``metrics.jsonl`` (training steps and evaluations), or [] without the file.
    A line a kill cut short is left out."""
    if not Path(path).is_file():
        return []
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def trim_metrics(path: Path, step: int) -> None:
    """Keep the lines of ``metrics.jsonl`` up to ``step`` (the one a run resumes from), so that each step is
    logged once after any resume."""
    if Path(path).is_file():
        kept = [m for m in read_metrics(path) if m.get("step", 0) <= step]
        atomic_write_text("".join(json.dumps(m) + "\n" for m in kept), path)
