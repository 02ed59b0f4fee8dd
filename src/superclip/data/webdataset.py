"""Reading webdataset tar shards: sources, shuffling, splitting over consumers, and positions to resume from.

Why our own reader and not the ``webdataset`` package: open_clip_train 3.3's pipeline crashes on webdataset
1.0.x, and what training needs here is small and must be exact (stream the members of a tar, group them by key,
split shards over ranks and workers, resume at a position), so a few hundred lines of stdlib ``tarfile`` are
easier to keep correct across releases than a dependency whose API keeps moving. ``bench/data_throughput.py``
measures it against the ``webdataset`` package's own pipeline.

**Sources.** ``--train-data`` is one or more sources joined with ``::``; each is a local path, a glob or a brace
pattern (``/data/{00000..00099}.tar``), or a ``pipe:COMMAND`` URL whose command writes a tar to stdout
(``pipe:aws s3 cp s3://bucket/{0..9}.tar -``, as webdataset reads object storage). A source that yields no
shard is a one-line error naming it.

**A sample** is the tar members sharing a key (the path up to the first dot of the file name): an image
(jpg/jpeg/png/webp) and a caption (``txt``, or a field of ``json``); an optional second caption (e.g.
``long.txt``) feeds the "dual caption" setting.

**Consumers and units.** Every (rank, data-loader worker) is a consumer, C = world_size x workers. The units
of reading are the shards, or, with fewer shards than consumers, each shard split into m = ceil(C / shards)
interleaved parts (sample i of a shard belongs to part i mod m), so that every consumer reads its own part and
no consumer reads every shard (a warning says how many shards would avoid the split).

**Order, and why resuming is cheap and exact.** Each epoch (and each further pass over the data, should an
epoch outlast one) deals a seeded permutation of the units to the consumers (``units[consumer::C]``); a
consumer reads its units one after the other and yields each unit's samples in a seeded permutation of their
own. There is no shuffle buffer that carries samples across units: the shuffle is a function of (seed, epoch,
pass, unit), so a consumer's position is (pass, unit index, offset in the unit's permutation), and a resumed
run opens that one unit and skips ``offset`` entries of its permutation: O(one shard), not O(epoch). Local
shards are indexed (member headers, then reads by offset), so skipping costs no image bytes; ``pipe:`` shards
are read whole into memory, one at a time per consumer. Mixing: a batch comes from one consumer, so from one
unit (at DataComp's ~10k samples per shard, more than webdataset's usual 1,000-5,000-sample buffer draws from);
across ranks and workers the batches of a step come from different shards.

**Resampling** (``--dataset-resampled``, open_clip's meaning): each consumer draws shards with replacement,
the d-th draw from a generator seeded with (seed, epoch, consumer, d), shards weighted by their source's
``--train-data-upsampling-factors`` (uniform over shards by default, so sources weigh by their size). The
position is (draw, offset), as exact and as cheap to resume.
"""
from __future__ import annotations

import glob
import json
import logging
import math
import os
import random
import subprocess
import tarfile
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from braceexpand import braceexpand
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import ConfigError
from .csv import clean_text
from .images import decode_image

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
PIPE = "pipe:"


# --- sources
def expand_sources(pattern: str) -> List[List[str]]:
    """``a/{0..3}.tar::b/*.tar::pipe:cmd {0..9}`` -> the shard URLs of each ``::`` source; a one-line error
    naming a source that yields none (a pipe URL is taken as it is: only running it can tell)."""
    sources = []
    for n, part in enumerate(pattern.split("::"), start=1):
        urls: List[str] = []
        for p in braceexpand(part.strip()):
            if p.startswith(PIPE):
                urls.append(p)
            elif any(c in p for c in "*?["):
                urls.extend(m for m in sorted(glob.glob(p)) if os.path.isfile(m))
            elif os.path.isfile(p):
                urls.append(p)
        if not urls:
            which = f"source {n} of {pattern.count('::') + 1} ({part!r})" if "::" in pattern else repr(part)
            raise ConfigError(f"no shard file matches {which}")
        sources.append(urls)
    return sources


def expand_urls(pattern: str) -> List[str]:
    """Every shard URL of ``pattern``, sources in order (see :func:`expand_sources`)."""
    return [url for source in expand_sources(pattern) for url in source]


# --- reading one shard
class ShardError(OSError):
    """A shard that could not be read to its end (truncated, unreadable, a pipe command that failed)."""


def _key(member) -> Optional[str]:
    """The sample key of a tar member (its path up to the first dot of the file name), None if it is none's."""
    dirname, base = os.path.split(member.name)
    if not member.isfile() or "." not in base:
        return None
    return os.path.join(dirname, base.split(".", 1)[0])


def _group(members: Sequence) -> List[List]:
    """Consecutive tar members sharing a key, as lists."""
    groups: List[List] = []
    key = None
    for member in members:
        k = _key(member)
        if k is None:
            continue
        if k != key:
            groups.append([])
            key = k
        groups[-1].append(member)
    return groups


def _sample(members_and_data) -> Dict[str, bytes]:
    """One sample's dict: ``__key__`` and extension -> bytes."""
    sample = {"__key__": _key(members_and_data[0][0]).encode()}
    for member, data in members_and_data:
        sample[os.path.basename(member.name).split(".", 1)[1].lower()] = data
    return sample


class Shard:
    """The samples of one shard, by index. A local file is indexed (its member headers) and each sample read
    by offset; a ``pipe:`` URL is run once and its tar read whole into memory. A shard cut short ends with an
    entry that fails to read (so the sample the cut went through is skipped and counted)."""

    def __init__(self, url: str):
        self.url = url
        self.error: Optional[str] = None
        self._file = None
        if url.startswith(PIPE):
            self._samples = self._read_pipe(url[len(PIPE):])
            self._groups = None
        else:
            self._file = open(url, "rb")
            members, tar = [], None
            try:
                tar = tarfile.open(fileobj=self._file, mode="r:")
                for member in tar:
                    members.append(member)
                if os.path.getsize(url) % tarfile.BLOCKSIZE:  # cut between two members
                    raise tarfile.ReadError(f"the file ends inside a {tarfile.BLOCKSIZE}-byte block: truncated")
            except (tarfile.TarError, OSError, EOFError) as e:
                self.error = f"{type(e).__name__}: {e}"
            self._tar = tar if members else None
            self._groups = _group(members)

    def _read_pipe(self, command: str) -> List[Dict[str, bytes]]:
        proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        samples: List[Dict[str, bytes]] = []
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|*") as tar:
                current: List = []
                for member in tar:
                    if _key(member) is None:
                        continue
                    if current and _key(member) != _key(current[0][0]):
                        samples.append(_sample(current))
                        current = []
                    current.append((member, tar.extractfile(member).read()))
                if current:
                    samples.append(_sample(current))
        except (tarfile.TarError, OSError, EOFError) as e:
            self.error = f"{type(e).__name__}: {e}"
        finally:
            err = proc.stderr.read().decode("utf-8", "replace").strip()
            rc = proc.wait()
        if rc != 0:  # the command's failure explains the tar error, if any
            self.error = f"command exited with {rc}" + (f": {err.splitlines()[-1]}" if err else "")
        return samples

    def __len__(self) -> int:
        n = len(self._samples) if self._groups is None else len(self._groups)
        return n + (self.error is not None)

    def __getitem__(self, i: int) -> Dict[str, bytes]:
        if self.error is not None and i == len(self) - 1:
            raise ShardError(f"shard {self.url}: {self.error} (the rest of the shard is skipped)")
        if self._groups is None:
            return self._samples[i]
        try:
            return _sample([(m, self._tar.extractfile(m).read()) for m in self._groups[i]])
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ShardError(f"shard {self.url}: {type(e).__name__}: {e}") from None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def iter_tar(url: str) -> Iterator[Dict[str, bytes]]:
    """The samples of one shard in order (dicts of extension -> bytes, plus ``__key__``)."""
    with Shard(url) as shard:
        for i in range(len(shard)):
            try:
                yield shard[i]
            except ShardError as e:
                log.warning("%s", e)


def decode_sample(sample: Dict[str, bytes], caption_key: str, long_caption_key: Optional[str]):
    """(PIL image, caption, long caption or None); raises ValueError on a missing part or bad bytes."""
    name = sample.get("__key__", b"?").decode("utf-8", "replace")
    if "__error__" in sample:  # the entry a read error ended a shard with
        raise ValueError(sample["__error__"].decode("utf-8", "replace"))
    img_bytes = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
    if img_bytes is None:
        raise ValueError(f"sample {name} has no image")

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

    return decode_image(img_bytes), text(caption_key), text(long_caption_key)


# --- the stream
@dataclass(frozen=True)
class Unit:
    """What a consumer reads at once: part ``part`` of ``parts`` interleaved parts of a shard."""

    url: str
    part: int = 0
    parts: int = 1

    def indices(self, n: int) -> range:
        return range(self.part, n, self.parts)


@dataclass
class Position:
    """Where a consumer stands in an epoch: ``round`` (the pass over the data, or the draw when resampling),
    the unit index within that round, and the entries of the unit's permutation already delivered."""

    round: int = 0
    unit: int = 0
    offset: int = 0

    def as_list(self) -> List[int]:
        return [self.round, self.unit, self.offset]


class ShardStream(IterableDataset):
    """An endless, seeded stream of raw samples for this (rank, data-loader worker): yields
    ``(sample, worker, position after it)`` (the module docstring says how it is ordered).

    Args:
        sources: the shard URLs of each ``::`` source (:func:`expand_sources`).
        resampled: draw shards with replacement (``--dataset-resampled``).
        weights: per-source upsampling factors (with ``resampled``).
        workers: data-loader workers per rank (for the number of consumers and the split of shards).
    """

    def __init__(self, sources: List[List[str]], seed: int = 0, rank: int = 0, world_size: int = 1,
                 workers: int = 0, resampled: bool = False, weights: Optional[Sequence[float]] = None):
        self.urls = [url for source in sources for url in source]
        self.seed, self.rank, self.world_size, self.resampled = seed, rank, world_size, resampled
        self.workers = max(1, workers)
        factors = list(weights) if weights is not None else [1.0] * len(sources)
        self.url_weights = [f for f, source in zip(factors, sources) for _ in source]
        self.epoch, self.positions, self.first_worker = 0, {}, 0
        consumers = world_size * self.workers
        self.parts = 1 if resampled or len(self.urls) >= consumers else math.ceil(consumers / len(self.urls))
        if self.parts > 1 and rank == 0:
            log.warning("%d shards for %d consumers (%d processes x %d loader workers): each shard is split into %d "
                        "parts and each consumer reads a whole shard to keep its part; %d or more shards avoid that",
                        len(self.urls), consumers, world_size, self.workers, self.parts, consumers)
        self.units = [Unit(url, p, self.parts) for url in self.urls for p in range(self.parts)]

    def set_position(self, epoch: int, positions: Dict[int, List[int]], first_worker: int = 0) -> None:
        """``positions``: logical worker -> [round, unit, offset]. ``first_worker``: which of the interrupted
        run's workers made the next batch; the new loader's worker 0 takes its place (a DataLoader always starts
        its round at worker 0)."""
        self.epoch, self.positions, self.first_worker = epoch, dict(positions), first_worker

    def _consumer(self) -> Tuple[int, int, int]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        wid = (wid + self.first_worker) % nw
        return self.rank * nw + wid, self.world_size * nw, wid

    def round_units(self, round_: int, consumer: int, total: int) -> List[Unit]:
        """The units a consumer reads in one pass over the data (not resampling), in order."""
        order = list(self.units)
        random.Random(f"{self.seed}-{self.epoch}-{round_}").shuffle(order)
        return order[consumer::total]

    def draw(self, index: int, consumer: int) -> Unit:
        """The ``index``-th shard a consumer draws, with replacement (resampling)."""
        rng = random.Random(f"{self.seed}-{self.epoch}-{consumer}-draw-{index}")
        return rng.choices(self.units, weights=self.url_weights)[0]

    def _units_from(self, pos: Position, consumer: int, total: int) -> Iterator[Tuple[Position, Unit]]:
        if self.resampled:
            for draw in range(pos.round, 1 << 62):
                yield Position(draw, 0, 0), self.draw(draw, consumer)
        round_, index = pos.round, pos.unit
        while True:
            units = self.round_units(round_, consumer, total)
            if not units:  # more consumers than units: this one has nothing to read
                return
            for u in range(index, len(units)):
                yield Position(round_, u, 0), units[u]
            round_, index = round_ + 1, 0

    def __iter__(self):
        consumer, total, wid = self._consumer()
        start = Position(*self.positions.get(wid, [0, 0, 0]))
        first = True
        for pos, unit in self._units_from(start, consumer, total):
            with Shard(unit.url) as shard:
                order = list(unit.indices(len(shard)))
                random.Random(f"{self.seed}-{self.epoch}-{pos.round}-{pos.unit}-{unit.part}").shuffle(order)
                offset = start.offset if first else 0
                first = False
                for k in range(offset, len(order)):
                    after = Position(pos.round, pos.unit, k + 1).as_list()
                    try:
                        sample = shard[order[k]]
                    except ShardError as e:
                        sample = {"__key__": unit.url.encode(), "__error__": str(e).encode()}
                    yield sample, wid, after
