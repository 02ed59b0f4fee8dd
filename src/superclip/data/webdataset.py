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
(jpg/jpeg/png/webp, and tif/tiff/bmp/gif, which open_clip's pipeline leaves out) and a caption (``txt``, or a
field of ``json``); an optional second caption (e.g. ``long.txt``) feeds the "dual caption" setting.

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
(and gzip / bzip2 / xz compressed ones) are read whole into memory, one at a time per consumer. Mixing: a
batch comes from one consumer, so from one unit (at DataComp's ~10k samples per shard, more than
webdataset's usual 1,000-5,000-sample buffer draws from);
across ranks and workers the batches of a step come from different shards.

**Damage** (:mod:`superclip.data.tars`): a damaged stretch of a shard, a cut, a failed or stalled ``pipe:``
command (``--wds-stall-timeout``) is a skipped, counted entry whose message names the shard and the offset;
reading goes on after it. When every shard fails in a row, training stops with one line saying why.

**Resampling** (``--dataset-resampled``, open_clip's meaning): each consumer draws shards with replacement,
the d-th draw from a generator seeded with (seed, epoch, consumer, d), shards weighted by their source's
``--train-data-upsampling-factors`` (uniform over shards by default, so sources weigh by their size). The
position is (draw, offset), as exact and as cheap to resume.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import random
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from torch.utils.data import IterableDataset, get_worker_info

from ..errors import TrainingError
from .csv import clean_text
from .images import decode_image
from .sources import PIPE, expand_sources, expand_urls  # noqa: F401 (the shard readers' names, kept here)
from .tars import DEFAULT_STALL_TIMEOUT, Member, compression, decompress, run_command, walk

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "tif", "tiff", "bmp", "gif")  # open_clip: the first four


# --- reading one shard
class ShardError(OSError):
    """A shard, or a stretch of one, that could not be read (truncated, damaged, a pipe command that failed)."""


def _key_ext(name: str) -> Optional[Tuple[str, str]]:
    """(sample key, extension) of a member name: the key is the path up to the first dot of the file name."""
    dirname, base = os.path.split(name)
    if "." not in base or not base.split(".", 1)[0]:
        return None
    stem, ext = base.split(".", 1)
    return os.path.join(dirname, stem), ext.lower()


def _group(members: Sequence[Member]) -> List[Tuple[str, Dict[str, Member]]]:
    """Samples: the members sharing a key, in order of first appearance. Members of one key need not be
    adjacent (``tar cf x.tar *.jpg *.txt`` is read right); a key whose extension is already taken starts the
    key's next sample (a sample written twice is two samples, as webdataset reads it)."""
    samples: List[Tuple[str, Dict[str, Member]]] = []
    open_by_key: Dict[str, List[int]] = {}
    for m in members:
        ke = _key_ext(m.name)
        if ke is None:
            continue
        key, ext = ke
        slots = open_by_key.setdefault(key, [])
        i = next((i for i in slots if ext not in samples[i][1]), None)
        if i is None:
            samples.append((key, {}))
            i = len(samples) - 1
            slots.append(i)
        samples[i][1][ext] = m
    return samples


class Shard:
    """The samples of one shard, by index, read without trusting it (:mod:`superclip.data.tars`).

    A local file is indexed (its member headers) and each sample read by offset; a ``pipe:`` command is run
    once (drained to its end, killed after ``stall_timeout`` seconds without a byte) and its archive kept in
    memory; a gzip / bzip2 / xz archive is decompressed into memory. Every damaged stretch (a header that does
    not parse, a cut, a failed command) is one entry that raises :class:`ShardError` naming the shard and the
    offset, so that it is skipped and counted; a damaged header whose member name can still be read marks
    that sample instead.
    """

    def __init__(self, url: str, stall_timeout: float = DEFAULT_STALL_TIMEOUT):
        self.url = url
        self.errors: List[str] = []  # entries after the samples, each read as a ShardError
        self.notes: List[str] = []  # what is worth saying but lost nothing
        self._file, self._samples, self._damaged = None, [], {}
        problem = None
        if url.startswith(PIPE):
            data, problem = run_command(url[len(PIPE):], stall_timeout)
            self._file, size = io.BytesIO(data), len(data)
        else:
            try:
                self._file = open(url, "rb")
                size = os.fstat(self._file.fileno()).st_size
            except OSError as e:
                self.errors.append(f"cannot open it: {e.strerror or e}")
                return
        kind = compression(self._file.read(6))
        self._file.seek(0)
        if kind:
            data, unpacked = decompress(self._file, kind)
            self._file.close()
            self._file, size = io.BytesIO(data), len(data)
            problem = "; ".join(filter(None, (problem, unpacked)))or None
        if size == 0:
            self.errors.append(problem or "the file is empty (0 bytes)")
            return
        index = walk(self._file, size)
        if index.archives > 1:
            self.notes.append(f"{index.archives} archives one after the other (concatenated tars): all read")
        self._samples = _group(index.members)
        keys = {key: i for i, (key, _) in reversed(list(enumerate(self._samples)))}
        for d in index.damage:
            ke = _key_ext(d.name) if d.name else None
            i = keys.get(ke[0]) if ke else None
            if i is not None and ke[1] not in self._samples[i][1] and i not in self._damaged:
                self._damaged[i] = d.describe()  # the sample the damaged member belonged to
            else:
                self.errors.append(d.describe())
        if problem:  # a failed command or compressed stream explains the break at the end, if any: one entry
            last = index.damage[-1] if index.damage else None
            if last is not None and last.resumed is None and self.errors and self.errors[-1] == last.describe():
                self.errors[-1] = problem + (f"; the archive breaks off at offset {last.offset}" if last.offset else "")
            else:
                self.errors.append(problem)
        if not self._samples and not self.errors:
            self.notes.append("it holds no samples (no member named KEY.EXTENSION)" if index.archives else
                              "it holds no samples (an empty archive)")

    def __len__(self) -> int:
        return len(self._samples) + len(self.errors)

    @property
    def readable(self) -> int:
        """Samples whose members all read (they may still fail to decode)."""
        return len(self._samples) - len(self._damaged)

    def __getitem__(self, i: int) -> Dict[str, bytes]:
        if i >= len(self._samples):
            raise ShardError(f"shard {self.url}: {self.errors[i - len(self._samples)]} (skipped)")
        if i in self._damaged:
            raise ShardError(f"shard {self.url}: sample {self._samples[i][0]}: {self._damaged[i]}")
        key, members = self._samples[i]
        sample = {"__key__": key.encode()}
        for ext, m in members.items():
            self._file.seek(m.offset)
            data = self._file.read(m.size)
            if len(data) != m.size:  # the file changed since it was indexed
                raise ShardError(f"shard {self.url}: member {m.name} at offset {m.offset}: {len(data)} of "
                                 f"{m.size} bytes")
            sample[ext] = data
        return sample

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def iter_tar(url: str, stall_timeout: float = DEFAULT_STALL_TIMEOUT) -> Iterator[Dict[str, bytes]]:
    """The samples of one shard in order (dicts of extension -> bytes, plus ``__key__``); each damaged stretch
    is a warning naming the shard and the offset."""
    with Shard(url, stall_timeout) as shard:
        for note in shard.notes:
            log.warning("shard %s: %s", url, note)
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
        stall_timeout: seconds without a byte from a ``pipe:`` command before it is killed and the shard skipped.
    """

    def __init__(self, sources: List[List[str]], seed: int = 0, rank: int = 0, world_size: int = 1,
                 workers: int = 0, resampled: bool = False, weights: Optional[Sequence[float]] = None,
                 stall_timeout: float = DEFAULT_STALL_TIMEOUT):
        self.stall_timeout = stall_timeout
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
        failing: Dict[Unit, str] = {}  # units read one after the other without a readable sample: what was wrong
        for pos, unit in self._units_from(start, consumer, total):
            with Shard(unit.url, self.stall_timeout) as shard:
                for note in shard.notes:
                    _say_once(f"shard {unit.url}: {note}")
                if not shard.readable:
                    failing[unit] = (shard.errors or shard.notes)[0]
                    if len(failing) == len(set(self.units)):  # every shard, in a row: the data is unreadable
                        url, what = next((u.url, w) for u, w in failing.items())
                        raise TrainingError(f"none of the {len(self.urls)} shards holds a readable sample (shard "
                                            f"{url}: {what})")
                else:
                    failing.clear()
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


_said: set = set()


def _say_once(message: str) -> None:
    """A warning logged once per process (a shard is read again every pass over the data)."""
    if message not in _said:
        _said.add(message)
        log.warning("%s", message)
