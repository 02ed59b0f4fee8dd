"""What ``index build`` / ``index add`` read: image folders, CSV/TSV files and webdataset shards, cut into parts.

A source is a folder (every image under it, recursively, in sorted order), a ``.csv`` / ``.tsv`` file (read by
:mod:`superclip.data.csv`, the reader ``train`` uses; relative image paths are taken from the file's folder), a
single image file, or a shard pattern as ``train`` reads it (local paths, globs, braces, ``pipe:``). Files are cut
into parts of ``part_size`` images; each shard is one part of its own (a ``pipe:`` shard is read once, when its
part is embedded).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional

from ..data.csv import read_columns
from ..errors import ConfigError
from ..files import file_sha256  # noqa: F401 - the search modules import it from here
from ..evaluate.data import IMAGE_SUFFIXES, is_shard_pattern


def source_kind(source: str) -> str:
    """``shards``, ``csv``, ``folder`` or ``file``; a one-line error for a source that is none of them."""
    if is_shard_pattern(source):
        return "shards"
    p = Path(source)
    if source.lower().endswith((".csv", ".tsv")):
        return "csv"
    if p.is_dir():
        return "folder"
    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
        return "file"
    if not p.exists():
        raise ConfigError(f"source not found: {source}")
    raise ConfigError(f"{source}: not an image folder, a .csv/.tsv file, an image or a .tar shard pattern")


def folder_images(root: str) -> List[str]:
    """Absolute paths of every image file under ``root``, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        out += [os.path.abspath(os.path.join(dirpath, f)) for f in sorted(filenames)
                if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES]
    return out


def source_files(source: str, csv_img_key: str = "filepath", csv_separator: Optional[str] = None) -> List[str]:
    """The image paths a folder, CSV/TSV or image-file source names (absolute)."""
    kind = source_kind(source)
    if kind == "folder":
        return folder_images(source)
    if kind == "file":
        return [os.path.abspath(source)]
    root = Path(source).parent
    rows = read_columns(source, {csv_img_key: "--csv-img-key"}, csv_separator)
    return [os.path.abspath(p if os.path.isabs(p) else root / p) for (p,) in rows]


def shard_urls(source: str) -> List[str]:
    from ..data.webdataset import expand_urls

    return [u if u.startswith("pipe:") else os.path.abspath(u) for u in expand_urls(source)]


def plan_parts(sources: List[str], part_size: int, csv_img_key: str = "filepath",
               csv_separator: Optional[str] = None, skip: Optional[set] = None) -> List[Dict]:
    """Part plans, in order: ``{"files": [path, ...]}`` (up to ``part_size`` each) or ``{"shard": url}``.

    A path or shard URL met twice (two sources naming one image) is planned once; ``skip``: paths and URLs not to
    plan (already in the catalog).
    """
    seen = set(skip or ())
    files: List[str] = []
    shards: List[str] = []
    for source in sources:
        if source_kind(source) == "shards":
            new = [u for u in shard_urls(source) if u not in seen]
            shards += new
        else:
            new = [p for p in source_files(source, csv_img_key, csv_separator) if p not in seen]
            files += new
        seen.update(new)
    plans = [{"files": files[s:s + part_size]} for s in range(0, len(files), part_size)]
    return plans + [{"shard": u} for u in shards]


def shard_identity(url: str) -> str:
    """A local shard's content hash; a ``pipe:`` URL is its own identity (only running it could tell more)."""
    return url if url.startswith("pipe:") else file_sha256(url)
