"""Writing files atomically: a temporary file in the same folder, fsync, then ``os.replace``. A reader (or a resumed
run) sees the old file or the whole new one, never a half-written one, also after a kill or a power cut. Every
command that writes a file a user keeps goes through here (checkpoints, run files, exports, embeddings, indexes)."""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def _test_write_delay() -> None:
    """Test-only: ``SUPERCLIP_TEST_WRITE_DELAY`` seconds of sleep before each rename, so that fault-injection
    tests can kill a run while a checkpoint is being written. Unset in real runs."""
    delay = os.environ.get("SUPERCLIP_TEST_WRITE_DELAY")
    if delay:
        time.sleep(float(delay))


_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: os.PathLike, write) -> None:
    """``write(file)`` into a temporary file in the same folder, fsync, then ``os.replace`` onto ``path``: a
    reader (or a resumed run) sees the old file or the whole new one, never a half-written one, also after a
    kill or a power cut. On any failure (a full disk) the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would make checkpoints private to their writer
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _test_write_delay()
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_torch_save(obj: Any, path: os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    import torch  # here: the command line's checks read index folders (search.layout) before torch is imported

    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: os.PathLike) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_bytes(data: bytes, path: os.PathLike) -> None:
    atomic_write(path, lambda f: f.write(data))


def file_sha256(path: os.PathLike) -> str:
    """The sha256 of a file's bytes, read 1 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
