"""Turning raw (image, caption) sources into training batches: transforms, tokenisation, corrupt-sample
handling, and a seeded sampler whose position is part of the checkpoint."""
from __future__ import annotations

import logging
import random
import zlib
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, Sampler

from ..errors import TrainingError
from ..seeding import generator_seed
from .csv import clean_text, image_path, read_captions
from .images import decode_image
from .sources import CaptionPolicy, check_train_data  # noqa: F401 (CaptionPolicy: its old home)

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
                 separator: Optional[str] = None, long_caption_key: Optional[str] = None, rows=None):
        self.rows = rows if rows is not None else read_captions(path, img_key, caption_key, separator,
                                                                long_caption_key)
        self.root = Path(path).parent
        self.has_long = long_caption_key is not None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Tuple[Image.Image, str, Optional[str]]:
        img_path, text, long_text = self.rows[index]
        text = clean_text(text)
        long_text = clean_text(long_text, "long caption") if self.has_long else None
        return decode_image(image_path(self.root, img_path)), text, long_text


class SyntheticPairs(Dataset):
    """A synthetic family's samples as (image, short caption, detailed caption)."""

    has_long = True

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        return self.source.sample(index)


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

    def __getitem__(self, key):
        """``key``: an index (of ``self.epoch``), or (epoch, index) as :class:`ResumableSampler` hands them out."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        error = None
        for skipped in range(_MAX_CONSECUTIVE_FAILURES):
            i = (index + skipped) % len(self.source)
            try:  # any failure of one sample (unreadable, truncated, a decompression bomb, a bad caption...)
                image, short, long = self.source[i]
                return (*self.encoder(image, short, long, hash((self.encoder.seed, epoch, i))), skipped)
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

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, with_epoch: bool = False):
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch, self.start = 0, 0
        self.with_epoch = with_epoch  # hand out (epoch, index): a dataset's persistent workers learn the epoch

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def per_rank(self) -> int:
        return self.size // self.world_size

    def __len__(self) -> int:
        return self.per_rank() - self.start

    def __iter__(self) -> Iterator:
        g = torch.Generator().manual_seed(generator_seed(self.seed * 1_000_003 + self.epoch))
        perm = torch.randperm(self.size, generator=g)[: self.per_rank() * self.world_size]
        mine = perm[self.rank::self.world_size][self.start:].tolist()
        return iter([(self.epoch, i) for i in mine] if self.with_epoch else mine)


def build_train_dataset(cfg, transform: Callable, tokenizer: Callable, image_size: int, rank: int = 0,
                        world_size: int = 1):
    """The training data named by the config: a map-style dataset (CSV/TSV, synthetic) or a shard stream."""
    data = check_train_data(cfg)
    encoder = SampleEncoder(transform, tokenizer, data.policy, seed=cfg.seed_of_data)
    if data.kind == "webdataset":
        from .webdataset import ShardStream

        stream = ShardStream(data.shards, seed=cfg.seed_of_data, rank=rank, world_size=world_size,
                             workers=cfg.workers, resampled=cfg.dataset_resampled, weights=data.weights,
                             stall_timeout=cfg.wds_stall_timeout)
        long_key = cfg.long_caption_key if data.policy.needs_long else None
        return ImageTextStream(stream, encoder, cfg.wds_caption_key, long_key)
    if data.kind.startswith("synthetic"):
        from .families import get_family

        family = get_family(data.kind)
        source = SyntheticPairs(family.dataset(cfg.train_num_samples or 10_000, image_size=image_size,
                                               seed=cfg.seed_of_data))
    else:
        source = CsvCaptions(cfg.train_data, cfg.csv_img_key, cfg.csv_caption_key, cfg.csv_separator,
                             cfg.long_caption_key, rows=data.rows)
    return ImageTextDataset(source, encoder)
