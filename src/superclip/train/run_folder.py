"""A run's folder: its name (open_clip's unique default, stable across torchrun restarts), the rule that an
existing run is never overwritten, the lock that keeps a second run out of it while one runs, and
``metrics.jsonl`` (read, and cut back to the step a run resumes from)."""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from .. import distributed
from ..config import TrainConfig
from ..errors import ConfigError, TrainingError
from ..files import atomic_write_text
from ..strict_json import dumps

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"


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
            base = default_name(cfg)
            for n in range(1, 1000):  # creating the folder claims the name: runs started in the same second
                name = base if n == 1 else f"{base}-{n}"  # (even at the same moment) get folders of their own
                try:
                    (Path(cfg.logs) / name).mkdir(parents=True)
                    break
                except FileExistsError:
                    continue
                except OSError:
                    break  # an unwritable --logs is reported by check_run_folder, in one line
        if marker is not None:
            try:
                atomic_write_text(name + "\n", marker)
            except OSError:
                pass  # an unwritable --logs is reported by check_run_folder, in one line
    cfg.name = distributed.broadcast_object(name)


def check_resume_latest_named(cfg: TrainConfig) -> None:
    """``--resume latest`` without ``--name`` is refused: every launch would make a new dated folder (before any
    torchrun restart, which keeps its run's name and resumes it by itself)."""
    if cfg.resume == "latest" and not cfg.name:
        raise ConfigError("--resume latest needs --name: without one every launch makes a new dated run folder, so "
                          "there is never anything to resume; give the run a name, the same on every launch (a "
                          "torchrun restart continues its own run without --resume)")


def nothing_to_resume(cfg: TrainConfig, existed: bool) -> str:
    """Why ``--resume latest`` found nothing for run ``cfg.name`` (a run folder without a readable checkpoint), and
    for a name that is new in ``--logs`` the closest name of a run there that has checkpoints (a typo)."""
    import difflib

    folder = run_dir(cfg)
    if existed:
        ckpts = any((folder / "checkpoints").glob("*.pt"))
        return f"run folder {folder} holds no {'readable ' if ckpts else ''}checkpoint yet"
    try:
        runs = sorted(d.name for d in Path(cfg.logs).iterdir() if d.name != cfg.name and
                      any((d / "checkpoints").glob("*.pt")))
    except OSError:
        runs = []
    close = difflib.get_close_matches(cfg.name, runs, n=1, cutoff=0.6)
    hint = f" (did you mean --name {close[0]}? it holds checkpoints)" if close else ""
    return f"there is no run {cfg.name!r} in {cfg.logs} to continue, a new folder was made{hint}"


class RunLock:
    """An exclusive lock on a run folder for the life of a run: ``fcntl.lockf`` on ``{run}/.lock``.

    The kernel drops the lock when the process ends however it ends (SIGKILL, a lost node), so a killed run's
    lock never blocks ``--resume``; the file stays (removing it would let a third run lock a file no one else
    sees). A POSIX lock rather than ``flock``: a data-loader worker forked from the run does not inherit it, so
    a worker outliving its killed run for a moment cannot keep the resume out. POSIX locks do not exclude the
    process that holds them, so the paths this process holds are also kept in ``_held`` (two Trainers in one
    Python process). Only rank 0 takes it: the ranks of one run share the folder.
    """

    _held: Dict[str, "RunLock"] = {}

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: Optional[int] = None

    def acquire(self) -> Optional[str]:
        """Take the lock; None, or why not (the one-line error). Raises OSError when the file cannot be opened."""
        key = os.path.realpath(self.path)
        if key in RunLock._held:
            return f"run folder {self.folder} is in use by another run of this process"
        try:
            import fcntl
        except ImportError:  # no POSIX locks (Windows): runs are not kept apart
            log.warning("no fcntl on this platform: run folder %s is not locked", self.folder)
            RunLock._held[key] = self
            return None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            holder = self._holder()
            return (f"run folder {self.folder} is in use by another superclip train{holder}: wait for it to end "
                    "(then --resume latest continues it), or start a new run with another --name")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                 .encode())
        self._fd = fd
        RunLock._held[key] = self
        return None

    def _holder(self) -> str:
        try:
            text = self.path.read_text().strip()
        except OSError:
            return ""
        return f" ({text})" if text else ""

    def release(self) -> None:
        key = os.path.realpath(self.path)
        if RunLock._held.get(key) is self:
            del RunLock._held[key]
        if self._fd is not None:
            os.close(self._fd)  # closing drops the POSIX lock
            self._fd = None


def check_run_folder(cfg: TrainConfig) -> Optional[RunLock]:
    """Rank 0 locks the run folder (:class:`RunLock`) and checks it: a folder another run holds is refused,
    checkpoints there without --resume are refused (a run is never overwritten), the folder must be writable.
    Every rank raises alike; rank 0 returns the lock, held until :meth:`RunLock.release` or the process ends."""
    error, lock = None, None
    if distributed.is_main_process():
        folder = run_dir(cfg)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock = RunLock(folder)
            error = lock.acquire()
            if error is None and cfg.resume is None and any((folder / "checkpoints").glob("*.pt")):
                error = (f"run folder {folder} already holds checkpoints: continue that run with --resume latest, "
                         "or start a new one with another --name")
            if error is None:
                probe = folder / f".write-test-{os.getpid()}"
                probe.write_bytes(b"")
                probe.unlink()
        except OSError as e:
            error = f"cannot write to the run folder {folder}: {e.strerror or e} (--logs / --name)"
        if error is not None and lock is not None:
            lock.release()
    error = distributed.broadcast_object(error)
    if error:
        raise ConfigError(error)
    return lock


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
        atomic_write_text("".join(dumps(m) + "\n" for m in kept), path)


def folder_id(folder: Path) -> Optional[tuple]:
    """(device, inode) of ``folder``, or None when it is gone: tells a deleted or replaced run folder."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_folder(folder: Path, expected_id: Optional[tuple], step: int) -> None:
    """A run folder deleted or replaced since the run began stops the run (before anything recreates it)."""
    if folder_id(folder) != expected_id:
        raise TrainingError(f"the run folder {folder} was deleted or replaced during training (noticed at step "
                            f"{step}): stopping; its checkpoints are gone with it (or are in the folder now there)")


def append_metrics(folder: Path, expected_id: Optional[tuple], record: Dict[str, Any], step: int) -> None:
    """Append one line to ``folder/metrics.jsonl``; a run folder deleted or replaced during the run (which a
    checkpoint write would otherwise silently recreate, half empty) stops the run in one line."""
    check_folder(folder, expected_id, step)
    try:
        with (Path(folder) / "metrics.jsonl").open("a") as f:
            f.write(dumps(record) + "\n")
    except OSError as e:
        raise TrainingError(f"cannot append to {Path(folder) / 'metrics.jsonl'}: {e.strerror or e}") from None
