"""Writing an export folder without clobbering or half-writing it: every format is written into a hidden
staging folder beside ``OUT`` (the same file system), then each file is fsynced and renamed into ``OUT`` —
a reader sees an old file or a whole new one. The CLI refuses a non-empty ``OUT`` unless ``--overwrite``
(which replaces the files the export writes and leaves the others alone)."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, List

from ..errors import ConfigError


def existing_files(out: Path) -> List[str]:
    """Names in ``out`` (sorted), or [] when it does not exist."""
    return sorted(p.name for p in out.iterdir()) if out.is_dir() else []


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """Yields a staging folder to export into; on success its files move into ``out``. On any failure the
    staging folder is removed and ``out`` is as it was."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    except OSError as e:
        raise ConfigError(f"cannot write to {out}: {e.strerror or e}") from None
    try:
        yield stage
        try:
            out.mkdir(exist_ok=True)
            for src in sorted(stage.rglob("*")):
                if src.is_dir():
                    continue
                dst = out / src.relative_to(stage)
                dst.parent.mkdir(parents=True, exist_ok=True)
                with open(src, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(src, dst)
            fd = os.open(out, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise ConfigError(f"cannot write to {out}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
