"""The files of an index folder, and how each one is written.

```
DIR/manifest.json                   model, checkpoint hash, dim, dtype, planned parts, counts per part, the index
DIR/img_emb/img_emb_{i:05d}.npy     (n_i, D) L2-normalised image embeddings of part i (clip-retrieval's layout)
DIR/metadata/metadata_{i:05d}.parquet  image_path, size, mtime, sha256, tags, tag_probs of the same n_i rows
DIR/thumbs/thumbs_{i:05d}.bin       the thumbnail JPEGs of part i's rows, one after the other
DIR/parts/plan_{i:05d}.json         what part i holds (file paths, or one shard URL)
DIR/parts/done_{i:05d}.json         part i is complete: its count and its skipped (unreadable) images
DIR/catalog.sqlite                  stable ids, paths, hashes, tags, deleted flags (catalog.py)
DIR/index/main-{g}.faiss            the main faiss index (index.py), generation g named in the manifest
DIR/skipped.tsv                     every file not indexed: path, reason (escaped: one line a file)
```

Every file is written atomically (temporary file, fsync, rename). A part is complete once its ``done`` file exists,
and that file is written after its embeddings and metadata, so a part interrupted anywhere is redone whole.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ..errors import ConfigError
from ..files import atomic_write

log = logging.getLogger(__name__)

FORMAT = "superclip-index"
VERSION = 1
MANIFEST = "manifest.json"


def kill_point(name: str) -> None:
    """Test-only: ``SUPERCLIP_TEST_KILL_AT=NAME[:N]`` SIGKILLs this process the N-th time (default 1st) it passes
    the point ``name``, so that fault tests can stop a job at an exact moment. Unset in real runs."""
    spec = os.environ.get("SUPERCLIP_TEST_KILL_AT")
    if not spec:
        return
    want, _, nth = spec.partition(":")
    if want != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] == int(nth or 1):
        log.warning("test hook: SIGKILL at %s", name)
        os.kill(os.getpid(), signal.SIGKILL)


_passes: Dict[str, int] = {}


def write_bytes(path: Path, write: Callable[[Any], None], point: Optional[str] = None) -> None:
    """``write(file)`` into ``path`` atomically; ``point``: a kill point passed with the data written but not yet
    renamed into place."""
    def body(f):
        write(f)
        if point:
            f.flush()
            kill_point(point)

    atomic_write(path, body)


def write_json(path: Path, obj: Any, point: Optional[str] = None) -> None:
    write_bytes(path, lambda f: f.write((json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()), point)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


class Layout:
    """Paths of one index folder."""

    def __init__(self, root: os.PathLike):
        self.root = Path(root)

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.sqlite"

    @property
    def skipped(self) -> Path:
        return self.root / "skipped.tsv"

    def emb(self, i: int) -> Path:
        return self.root / "img_emb" / f"img_emb_{i:05d}.npy"

    def meta(self, i: int) -> Path:
        return self.root / "metadata" / f"metadata_{i:05d}.parquet"

    def thumbs(self, i: int) -> Path:
        return self.root / "thumbs" / f"thumbs_{i:05d}.bin"

    def plan(self, i: int) -> Path:
        return self.root / "parts" / f"plan_{i:05d}.json"

    def done(self, i: int) -> Path:
        return self.root / "parts" / f"done_{i:05d}.json"

    def no_index(self) -> ConfigError:
        return ConfigError(f"{self.root} holds no index (no {MANIFEST}): build one with superclip index build")

    def foreign(self) -> List[str]:
        """Names in a folder without a manifest that a build does not write before its manifest: only the lock,
        part plans and temporary files mean a build killed while planning (its rerun plans again); anything else
        is someone else's files, never built over."""
        if not self.root.is_dir():
            return []

        def leftover(p: Path) -> bool:
            if p.name == ".lock" or p.name.endswith(".tmp"):
                return True
            return p.name == "parts" and p.is_dir() and all(
                q.name.startswith("plan_") and q.name.endswith((".json", ".tmp")) for q in p.iterdir())

        return sorted(p.name for p in self.root.iterdir() if not leftover(p))

    def read_manifest(self) -> Dict[str, Any]:
        """The manifest, or a one-line error when the folder holds no index."""
        if not self.manifest.is_file():
            raise self.no_index()
        try:
            m = read_json(self.manifest)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{self.manifest} is unreadable: {e}") from None
        if m.get("format") != FORMAT:
            raise ConfigError(f"{self.manifest} is not a superclip index manifest")
        return m

    def write_manifest(self, m: Dict[str, Any], point: Optional[str] = None) -> None:
        write_json(self.manifest, m, point)


class FolderLock:
    """An exclusive lock on an index folder for the life of a writing command (build, add, remove, optimize):
    a second writer fails at once with a one-line error instead of interleaving with the first."""

    def __init__(self, root: Path, create: bool = True):
        """``create``: make the folder (a build); else a missing folder is the one-line "holds no index"."""
        if not create and not root.is_dir():
            raise Layout(root).no_index()
        root.mkdir(parents=True, exist_ok=True)
        self.file = open(root / ".lock", "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.close()
            raise ConfigError(f"{root} is in use by another superclip index command (lock {root / '.lock'})") from None
        # the lock holder is the only writer: a temporary file left now is a killed writer's, never to be renamed
        for sub in ("", "img_emb", "metadata", "parts", "index", "thumbs"):
            for tmp in (root / sub).glob("*.tmp"):
                tmp.unlink()

    def release(self) -> None:
        self.file.close()
