"""What ``index build`` / ``index add`` read: image folders, CSV/TSV files and webdataset shards, cut into parts.

A source is a folder (every image under it, recursively, in sorted order), a ``.csv`` / ``.tsv`` file (read by
:mod:`superclip.data.csv`, the reader ``train`` uses; relative image paths are taken from the file's folder), a
single image file, or a shard pattern as ``train`` reads it (local paths, globs, braces, ``pipe:``). Files are cut
into parts of ``part_size`` images; each shard is one part of its own (a ``pipe:`` shard is read once, when its
part is embedded).
"""
from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from ..data.csv import read_columns
from ..data.images import HEIF_HINT, HEIF_SUFFIXES, image_suffixes
from ..errors import ConfigError
from ..evaluate.data import is_shard_pattern
from ..files import file_sha256
from .names import display

# Why a file of a source is not indexed: the code kept in the catalog and skipped.tsv, and how the summary says it
REASONS = {
    "not-image": "not an image file type",
    "heif": "HEIC/HEIF images without pillow-heif",
    "symlink": "symbolic links, not followed",
    "not-regular": "not regular files",
    "unlistable": "folders that could not be listed",
    "excluded": "excluded by superclip index remove",
    "unreadable": "unreadable images",
}
SYMLINK_DETAIL = ("a link may lead outside the folder (and the server would then open what it points at): name its "
                  "target as a source to index it")


def resolve(source: str) -> str:
    """A source or path as the index stores it: absolute with every symbolic link and ``..`` resolved, so that one
    folder given through two paths is one source; ``pipe:`` commands as they are."""
    return source if source.startswith("pipe:") else os.path.realpath(source)


def source_kind(source: str) -> str:
    """``shards``, ``csv``, ``folder`` or ``file``; a one-line error for a source that is none of them."""
    if is_shard_pattern(source):
        return "shards"
    p = Path(source)
    if source.lower().endswith((".csv", ".tsv")):
        return "csv"
    if p.is_dir():
        return "folder"
    if p.is_file() and p.suffix.lower() in image_suffixes():
        return "file"
    if not p.exists():
        raise ConfigError(f"source not found: {display(source)}")
    raise ConfigError(f"{display(source)}: not an image folder, a .csv/.tsv file, an image or a .tar shard pattern")


def _not_regular(mode: int) -> str:
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return "not a regular file"


def scan_folder(root: str) -> Tuple[List[str], List[Tuple[str, str, str]]]:
    """(image files, skipped) under the folder ``root`` (resolved), recursively: each folder's files in sorted
    order, then its sub-folders in sorted order. Only regular files are taken (a FIFO named ``x.png`` would block
    a reader forever); symbolic links are not followed (no loops, nothing outside the folder); every other entry is
    in ``skipped`` as (path, reason code of :data:`REASONS`, detail)."""
    suffixes = image_suffixes()
    files: List[str] = []
    skipped: List[Tuple[str, str, str]] = []

    def walk(folder: str) -> None:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            skipped.append((folder, "unlistable", e.strerror or str(e)))
            return
        subfolders = []
        for e in entries:
            try:
                if e.is_symlink():
                    skipped.append((e.path, "symlink", SYMLINK_DETAIL))
                elif e.is_dir(follow_symlinks=False):
                    subfolders.append(e.path)
                elif not e.is_file(follow_symlinks=False):
                    skipped.append((e.path, "not-regular", _not_regular(e.stat(follow_symlinks=False).st_mode)))
                else:
                    suffix = os.path.splitext(e.name)[1].lower()
                    if suffix in suffixes:
                        files.append(e.path)
                    elif suffix in HEIF_SUFFIXES:
                        skipped.append((e.path, "heif", HEIF_HINT))
                    else:
                        skipped.append((e.path, "not-image", f"suffix {suffix or '(none)'}"))
            except OSError as err:  # gone between the listing and the look
                skipped.append((e.path, "unreadable", err.strerror or str(err)))
        for sub in subfolders:
            walk(sub)

    walk(root)
    return files, skipped


def folder_images(root: str) -> List[str]:
    """Absolute paths of every image file under ``root``, in scan order (:func:`scan_folder`)."""
    return scan_folder(resolve(root))[0]


def source_files(source: str, csv_img_key: str = "filepath", csv_separator: Optional[str] = None,
                 skipped: Optional[list] = None) -> List[str]:
    """The image paths a folder, CSV/TSV or image-file source names (resolved); ``skipped``: a list that receives
    what a folder holds and is not indexed (:func:`scan_folder`)."""
    kind = source_kind(source)
    if kind == "folder":
        files, skips = scan_folder(resolve(source))
        if skipped is not None:
            skipped += skips
        return files
    if kind == "file":
        return [resolve(source)]
    root = Path(source).parent
    rows = read_columns(source, {csv_img_key: "--csv-img-key"}, csv_separator)
    return [resolve(p if os.path.isabs(p) else str(root / p)) for (p,) in rows]


def shard_urls(source: str) -> List[str]:
    from ..data.webdataset import expand_urls

    return [resolve(u) for u in expand_urls(source)]


@dataclass
class Scan:
    """What reading the sources found besides the images to plan: the folder sources listed, every image file the
    sources name, and what is not indexed (path, reason code of :data:`REASONS`, detail)."""
    folders: List[str] = field(default_factory=list)
    files: List[str] = field(default_factory=list)
    skipped: List[Tuple[str, str, str]] = field(default_factory=list)

    def source_files(self, source: str, csv_img_key: str, csv_separator: Optional[str],
                     excluded: Optional[Callable[[str, str], bool]] = None) -> List[str]:
        """:func:`source_files`, noting what is skipped; files ``excluded(path, "")`` are skipped as excluded."""
        files = source_files(source, csv_img_key, csv_separator, self.skipped)
        if source_kind(source) == "folder":
            self.folders.append(resolve(source))
        self.files += files
        if excluded is None:
            return files
        keep = []
        for p in files:
            if excluded(p, ""):
                self.skipped.append((p, "excluded", ""))
            else:
                keep.append(p)
        return keep

    def scan_only(self, sources: List[str], csv_img_key: str, csv_separator: Optional[str]) -> "Scan":
        """Read the folder and CSV sources for what they skip (a command resumed, which plans nothing new)."""
        for source in sources:
            if source_kind(source) != "shards":
                self.source_files(source, csv_img_key, csv_separator)
        return self


def plan_parts(sources: List[str], part_size: int, csv_img_key: str = "filepath",
               csv_separator: Optional[str] = None, skip: Optional[set] = None, scan: Optional[Scan] = None,
               excluded: Optional[Callable[[str, str], bool]] = None) -> List[Dict]:
    """Part plans, in order: ``{"files": [path, ...]}`` (up to ``part_size`` each) or ``{"shard": url}``.

    A path or shard URL met twice (two sources naming one image) is planned once; ``skip``: paths and URLs not to
    plan (already in the catalog); ``scan``: receives what the folders skip; ``excluded(path, source)``: files and
    shards not to plan (``index remove``).
    """
    scan = scan if scan is not None else Scan()
    seen = set(skip or ())
    files: List[str] = []
    shards: List[str] = []
    for source in sources:
        if source_kind(source) == "shards":
            new = [u for u in shard_urls(source) if u not in seen and not (excluded and excluded(u, u))]
            shards += new
        else:
            new = [p for p in scan.source_files(source, csv_img_key, csv_separator, excluded) if p not in seen]
            files += new
        seen.update(new)
    plans = [{"files": files[s:s + part_size]} for s in range(0, len(files), part_size)]
    return plans + [{"shard": u} for u in shards]


def checkpoint_hash(path: Optional[str]) -> Optional[str]:
    """sha256 of a checkpoint file, or of a model folder's files (names and contents, sorted)."""
    if path is None:
        return None
    p = Path(path)
    if p.is_file():
        return file_sha256(str(p))
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(str(f.relative_to(p)).encode() + b"\0" + file_sha256(str(f)).encode())
        return h.hexdigest()
    return None  # a hub name: its resolved file is hashed by the caller when it has one


def shard_identity(url: str) -> str:
    """A local shard's content hash; a ``pipe:`` URL is its own identity (only running it could tell more)."""
    return url if url.startswith("pipe:") else file_sha256(url)
