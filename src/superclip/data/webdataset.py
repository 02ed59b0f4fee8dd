"""A minimal reader of webdataset tar shards.

Why our own and not the ``webdataset`` package: open_clip_train 3.3's pipeline crashes on webdataset 1.0.x,
and what training needs here is small (stream the members of a tar, group them by key, split shards over
ranks and workers, skip to a position on resume), so ~150 lines of stdlib ``tarfile`` are easier to keep
correct across releases than a dependency whose API keeps moving.

Shard patterns use brace expansion (``/data/{00000..00099}.tar``); several sources are joined with ``::``.
A sample is the tar members sharing a key (the path up to the first dot of the file name): an image
(jpg/jpeg/png/webp) and a caption (``txt``, or a field of ``json``); an optional second caption (e.g.
``long.txt``) feeds the "dual caption" setting.
"""
from __future__ import annotations

import glob
import io
import json
import logging
import os
import random
import tarfile
from typing import Dict, Iterator, List, Optional, Tuple

from braceexpand import braceexpand
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import ConfigError
from .csv import clean_text

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def expand_urls(pattern: str) -> List[str]:
    """``a/{0..3}.tar::b/*.tar`` -> the list of existing shard files; a clear error if none match."""
    urls: List[str] = []
    for part in pattern.split("::"):
        for p in braceexpand(part):
            matches = sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p]
            urls.extend(m for m in matches if os.path.isfile(m))
    if not urls:
        raise ConfigError(f"no shard file matches {pattern!r}")
    return urls


def iter_tar(path: str) -> Iterator[Dict[str, bytes]]:
    """Samples of one shard: dicts of extension -> bytes, plus '__key__'. Unreadable shards are logged and end."""
    current: Dict[str, bytes] = {}
    key = None
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                dirname, base = os.path.split(member.name)
                if "." not in base:
                    continue
                stem, ext = base.split(".", 1)
                k = os.path.join(dirname, stem)
                if k != key and current:
                    yield current
                    current = {}
                key = k
                current["__key__"] = k.encode()
                current[ext.lower()] = tar.extractfile(member).read()
        if os.path.isfile(path) and os.path.getsize(path) % tarfile.BLOCKSIZE:  # cut between two members
            raise tarfile.ReadError(f"the file ends inside a {tarfile.BLOCKSIZE}-byte block: truncated")
    except (tarfile.TarError, OSError, EOFError) as e:
        log.warning("shard %s: read error, rest of the shard skipped: %s", path, e)
        # the sample the error cut through is counted as skipped (decoding it fails); the rest is unknown
        current = {"__key__": (key or path).encode(), "__error__": str(e).encode()}
    if current:
        yield current


def decode_sample(sample: Dict[str, bytes], caption_key: str, long_caption_key: Optional[str]):
    """(PIL image, caption, long caption or None); raises ValueError on a missing part or bad bytes."""
    if "__error__" in sample:
        raise ValueError(f"sample {sample['__key__'].decode('utf-8', 'replace')}: shard read error "
                         f"{sample['__error__'].decode('utf-8', 'replace')}")
    img_bytes = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
    if img_bytes is None:
        raise ValueError(f"sample {sample.get('__key__', b'?').decode('utf-8', 'replace')} has no image")

    name = sample.get("__key__", b"?").decode("utf-8", "replace")

    def text(key: Optional[str]) -> Optional[str]:
        if key is None:
            return None
        if key in sample:
            return clean_text(sample[key].decode("utf-8"))
        if "json" in sample:  # a field of the json member
            meta = json.loads(sample["json"])
            value = meta.get(key) if isinstance(meta, dict) else None
            if isinstance(value, str):
                return clean_text(value)
            if value is not None:
                raise ValueError(f"sample {name}: json field {key!r} is a {type(value).__name__}, not a caption")
        raise ValueError(f"sample {name} has no caption {key!r}")

    with Image.open(io.BytesIO(img_bytes)) as im:
        image = im.convert("RGB")
    return image, text(caption_key), text(long_caption_key)


class ShardStream(IterableDataset):
    """An endless, seeded stream of raw samples for this (rank, data-loader worker).

    Shards are split over ``world_size x workers`` consumers (or, with fewer shards than consumers, every
    consumer reads all shards and keeps every n-th sample). Each pass over the shards is reshuffled from
    (seed, epoch, pass); samples are shuffled in a seeded buffer. ``raw_skip[w]`` (set before iterating)
    drops the raw samples (good and corrupt) that data-loader worker w already delivered this epoch, so a
    resumed run continues the epoch exactly.
    """

    def __init__(self, urls: List[str], seed: int = 0, rank: int = 0, world_size: int = 1, shuffle_buffer: int = 1000):
        self.urls, self.seed, self.rank, self.world_size = urls, seed, rank, world_size
        self.shuffle_buffer = shuffle_buffer
        self.epoch, self.raw_skip, self.first_worker = 0, [], 0

    def set_position(self, epoch: int, raw_skip: List[int], first_worker: int = 0) -> None:
        """``first_worker``: which of the interrupted run's workers made the next batch; the new loader's
        worker 0 takes its place (a DataLoader always starts its round at worker 0)."""
        self.epoch, self.raw_skip, self.first_worker = epoch, list(raw_skip), first_worker

    def _consumer(self) -> Tuple[int, int, int]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        wid = (wid + self.first_worker) % nw
        return self.rank * nw + wid, self.world_size * nw, wid

    def _raw(self, consumer: int, total: int) -> Iterator[Dict[str, bytes]]:
        pass_idx = 0
        while True:
            order = list(self.urls)
            random.Random(f"{self.seed}-{self.epoch}-{pass_idx}").shuffle(order)
            if len(order) >= total:
                for url in order[consumer::total]:
                    yield from iter_tar(url)
            else:
                n = 0
                for url in order:
                    for sample in iter_tar(url):
                        if n % total == consumer:
                            yield sample
                        n += 1
            pass_idx += 1

    def __iter__(self):
        consumer, total, wid = self._consumer()
        skip = self.raw_skip[wid] if wid < len(self.raw_skip) else 0
        rng = random.Random(f"{self.seed}-{self.epoch}-{consumer}-buffer")
        buffer: List[Dict[str, bytes]] = []
        for sample in self._raw(consumer, total):
            buffer.append(sample)
            if len(buffer) < self.shuffle_buffer:
                continue
            out = buffer.pop(rng.randrange(len(buffer)))
            if skip:
                skip -= 1
                continue
            yield out
