"""Turning raw (image, caption) sources into training batches: transforms, tokenisation, corrupt-sample
handling, and a seeded sampler whose position is part of the checkpoint."""
from __future__ import annotations

import logging
import math
import random
import zlib
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, Sampler

from ..errors import ConfigError, TrainingError
from ..seeding import generator_seed
from .csv import clean_text, read_columns
from .images import decode_image

log = logging.getLogger(__name__)

# A corrupt sample is replaced by the next readable one (keeping batch shapes equal across ranks, which the
# gathered contrastive loss needs) and counted; this many failures in a row mean the data itself is broken.
_MAX_CONSECUTIVE_FAILURES = 50
_MAX_CONSECUTIVE_FAILURES_STREAM = 200  # shards: a corrupt stretch of one shard should not end a long run


class CsvCaptions(Dataset):
    """Rows of a CSV/TSV file (:mod:`superclip.data.csv`): (PIL image, caption, long caption or None).
    Relative image paths are taken from the file's folder. A row whose caption is empty or not UTF-8 fails
    (ValueError) when read, so that the sample is skipped and counted."""

    def __init__(self, path: str, img_key: str = "filepath", caption_key: str = "title",
                 separator: Optional[str] = None, long_caption_key: Optional[str] = None):
        columns = {img_key: "--csv-img-key", caption_key: "--csv-caption-key"}
        if long_caption_key:
            columns[long_caption_key] = "--long-caption-key"
        rows = read_columns(path, columns, separator)
        self.root = Path(path).parent
        self.rows = [(r[0], r[1], r[2] if long_caption_key else None) for r in rows]
        self.has_long = long_caption_key is not None
        if not any(text.strip() for _, text, _ in self.rows):
            raise ConfigError(f"every caption in {path} (column {caption_key!r}) is empty")
        # fail now, not after 50 unreadable samples in a row: look at a spread of up to 32 image paths
        probe = self.rows[::max(1, len(self.rows) // 32)][:32]
        if not any(self._full(p).is_file() for p, _, _ in probe):
            raise ConfigError(f"{path}: none of {len(probe)} image paths looked at exists (e.g. "
                              f"{str(self._full(probe[0][0]))!r}); relative paths are read from the CSV's folder")

    def _full(self, img_path: str) -> Path:
        return Path(img_path) if Path(img_path).is_absolute() else self.root / img_path

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Tuple[Image.Image, str, Optional[str]]:
        img_path, text, long_text = self.rows[index]
        text = clean_text(text)
        long_text = clean_text(long_text, "long caption") if self.has_long else None
        return decode_image(self._full(img_path)), text, long_text


class SyntheticPairs(Dataset):
    """A synthetic family's samples as (image, short caption, detailed caption)."""

    has_long = True

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        return self.source.sample(index)


class CaptionPolicy:
    """Which caption feeds which loss: ``contrastive`` / ``cls`` in {short, long}, or ``long_ratio`` p: the long
    caption with probability p, else the short one, for both losses (the paper's Table 5 mixing rows)."""

    def __init__(self, contrastive: str = "short", cls: str = "short", long_ratio: Optional[float] = None):
        self.contrastive, self.cls, self.long_ratio = contrastive, cls, long_ratio

    @property
    def needs_long(self) -> bool:
        return self.long_ratio is not None or "long" in (self.contrastive, self.cls)

    @property
    def dual(self) -> bool:
        return self.long_ratio is None and self.contrastive != self.cls

    def pick(self, short: str, long: Optional[str], rng: random.Random) -> Tuple[str, Optional[str]]:
        """(contrastive caption, class caption or None when it is the same one)."""
        if self.long_ratio is not None:
            return (long if rng.random() < self.long_ratio else short), None
        choose = {"short": short, "long": long}
        return choose[self.contrastive], (choose[self.cls] if self.dual else None)


class SampleEncoder:
    """Image transform + tokenizer + caption choice, with the RNG of each sample seeded from its identity,
    so that augmentation is reproducible and a resumed run sees the same crops."""

    def __init__(self, transform: Callable, tokenizer: Callable, policy: CaptionPolicy, seed: int = 0):
        self.transform, self.tokenizer, self.policy, self.seed = transform, tokenizer, policy, seed

    def __call__(self, image, short: str, long: Optional[str], sample_seed: int):
        rng = random.Random(sample_seed)
        con, cls = self.policy.pick(short, long, rng)
        # The transforms draw from the global CPU generator: seed it for this sample, then put it back.
        # (Generator.manual_seed directly: torch.manual_seed costs ~0.8 ms a call, mostly bookkeeping.)
        gen = torch.default_generator
        state = gen.get_state()
        gen.manual_seed(sample_seed & 0x7FFFFFFF)
        try:
            pixels = self.transform(image)
        finally:
            gen.set_state(state)
        ids = self.tokenizer([con] if cls is None else [con, cls])
        return pixels, ids[0], (ids[1] if cls is not None else None)


class ImageTextDataset(Dataset):
    """A map-style source encoded for training. Returns (image, ids, class ids or None, n_skipped)."""

    def __init__(self, source: Dataset, encoder: SampleEncoder):
        self.source = source
        self.encoder = encoder
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        error = None
        for skipped in range(_MAX_CONSECUTIVE_FAILURES):
            i = (index + skipped) % len(self.source)
            try:  # any failure of one sample (unreadable, truncated, a decompression bomb, a bad caption...)
                image, short, long = self.source[i]
                return (*self.encoder(image, short, long, hash((self.encoder.seed, self.epoch, i))), skipped)
            except Exception as e:  # noqa: BLE001 - one sample's failure never stops the run
                log.warning("skipping unreadable sample %d: %s", i, e)
                error = e
        raise TrainingError(f"{_MAX_CONSECUTIVE_FAILURES} unreadable samples in a row from sample {index} "
                            f"(the last: {type(error).__name__}: {error}); is the data readable?")


class ImageTextStream(IterableDataset):
    """A webdataset shard stream decoded and encoded for training; corrupt samples are skipped and counted
    (the count rides on the next good sample). Each item ends with ``(worker, position after it)`` so that the
    trainer knows where every loader worker stands."""

    def __init__(self, stream, encoder: SampleEncoder, caption_key: str, long_caption_key: Optional[str]):
        self.stream, self.encoder = stream, encoder
        self.caption_key, self.long_caption_key = caption_key, long_caption_key

    def __iter__(self):
        from .webdataset import decode_sample

        skipped, said = 0, set()
        for raw, worker, position in self.stream:
            try:  # any failure of one sample is skipped and counted (it rides on the next good one)
                image, short, long = decode_sample(raw, self.caption_key, self.long_caption_key)
                sample_seed = zlib.crc32(raw["__key__"]) ^ (self.encoder.seed * 1_000_003 + self.stream.epoch)
                encoded = self.encoder(image, short, long, sample_seed)
            except Exception as e:  # noqa: BLE001
                if str(e) not in said:  # a damaged shard read again on the next pass is said once
                    said.add(str(e))
                    log.warning("skipping unreadable sample: %s", e)
                skipped += 1
                if skipped >= _MAX_CONSECUTIVE_FAILURES_STREAM:
                    hint = "; is --wds-caption-key right?" if "has no caption" in str(e) else ""
                    raise TrainingError(f"{skipped} unreadable samples in a row in the shards (the last: "
                                        f"{type(e).__name__}: {e}){hint}") from None
                continue
            yield (*encoded, skipped, (worker, position))
            skipped = 0


def collate(batch: List) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], int, Optional[tuple]]:
    """(images, ids, class ids or None, samples skipped, (worker, position) after the batch's last sample or
    None for map-style data)."""
    images, ids, cls_ids, skipped = (list(x) for x in zip(*(item[:4] for item in batch)))
    cls = torch.stack(cls_ids) if cls_ids[0] is not None else None
    position = batch[-1][4] if len(batch[-1]) > 4 else None
    return torch.stack(images), torch.stack(ids), cls, int(sum(skipped)), position


class ResumableSampler(Sampler):
    """A seeded permutation per epoch, this rank's share of it, starting after ``start`` of its samples.

    Every rank gets ``len(dataset) // world_size`` samples (the remainder is dropped so batches stay equal).
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def per_rank(self) -> int:
        return self.size // self.world_size

    def __len__(self) -> int:
        return self.per_rank() - self.start

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(generator_seed(self.seed * 1_000_003 + self.epoch))
        perm = torch.randperm(self.size, generator=g)[: self.per_rank() * self.world_size]
        mine = perm[self.rank::self.world_size]
        return iter(mine[self.start:].tolist())


def dataset_kind(cfg) -> str:
    kind = cfg.dataset_type
    if kind != "auto":
        return kind
    if cfg.train_data is None:
        return "synthetic"
    if cfg.train_data.endswith((".csv", ".tsv")):
        return "csv"
    if ".tar" in cfg.train_data:
        return "webdataset"
    raise ConfigError(f"cannot tell the dataset type of {cfg.train_data!r}: set --dataset-type")


def upsampling_factors(cfg, n_sources: int) -> Optional[List[float]]:
    """``--train-data-upsampling-factors 1::2`` -> [1.0, 2.0] (open_clip's meaning: a source's shards are drawn
    with its factor as weight; needs ``--dataset-resampled``), checked against the sources."""
    if cfg.train_data_upsampling_factors is None:
        return None
    if not cfg.dataset_resampled:
        raise ConfigError("--train-data-upsampling-factors needs --dataset-resampled (as in open_clip)")
    try:
        factors = [float(x) for x in str(cfg.train_data_upsampling_factors).split("::")]
    except ValueError:
        raise ConfigError(f"--train-data-upsampling-factors: expected numbers joined with '::', got "
                          f"{cfg.train_data_upsampling_factors!r}") from None
    if len(factors) != n_sources:
        raise ConfigError(f"--train-data-upsampling-factors has {len(factors)} factors for {n_sources} --train-data "
                          "sources (join both with '::')")
    if any(f < 0 or not math.isfinite(f) for f in factors) or not any(factors):
        raise ConfigError(f"--train-data-upsampling-factors must be >= 0 and not all 0, got {factors}")
    return factors


def build_train_dataset(cfg, transform: Callable, tokenizer: Callable, image_size: int, rank: int = 0,
                        world_size: int = 1):
    """The training data named by the config: a map-style dataset (CSV/TSV, synthetic) or a shard stream."""
    kind = dataset_kind(cfg)
    policy = CaptionPolicy(cfg.contrastive_caption, cfg.class_caption, cfg.long_caption_ratio)
    encoder = SampleEncoder(transform, tokenizer, policy, seed=cfg.seed_of_data)
    if kind == "webdataset":
        from .webdataset import ShardStream, expand_sources

        if not cfg.train_data:
            raise ConfigError("--train-data is required for --dataset-type webdataset")
        if not cfg.train_num_samples:
            raise ConfigError("--train-num-samples is required for webdataset shards (samples per epoch)")
        if policy.needs_long and not cfg.long_caption_key:
            raise ConfigError("a long caption is asked for: name it with --long-caption-key (e.g. long.txt)")
        sources = expand_sources(cfg.train_data)
        weights = upsampling_factors(cfg, len(sources))
        stream = ShardStream(sources, seed=cfg.seed_of_data, rank=rank, world_size=world_size, workers=cfg.workers,
                             resampled=cfg.dataset_resampled, weights=weights,
                             stall_timeout=cfg.wds_stall_timeout)
        long_key = cfg.long_caption_key if policy.needs_long else None
        return ImageTextStream(stream, encoder, cfg.wds_caption_key, long_key)
    if kind.startswith("synthetic"):
        from .families import get_family

        family = get_family(kind)
        source = SyntheticPairs(family.dataset(cfg.train_num_samples or 10_000, image_size=image_size,
                                               seed=cfg.seed_of_data))
    elif kind == "csv":
        if not cfg.train_data:
            raise ConfigError("--train-data is required for --dataset-type csv")
        if policy.needs_long and not cfg.long_caption_key:
            raise ConfigError("a long caption is asked for: name its column with --long-caption-key")
        source = CsvCaptions(cfg.train_data, cfg.csv_img_key, cfg.csv_caption_key, cfg.csv_separator,
                             cfg.long_caption_key)
    else:
        raise ConfigError(f"unknown dataset type {kind!r}")
    return ImageTextDataset(source, encoder)
