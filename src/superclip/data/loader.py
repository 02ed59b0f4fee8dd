"""Turning raw (image, caption) sources into training batches: transforms, tokenisation, corrupt-sample
handling, and a seeded sampler whose position is part of the checkpoint."""
from __future__ import annotations

import csv
import logging
import random
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from ..errors import ConfigError

log = logging.getLogger(__name__)

# A corrupt sample is replaced by the next readable one (keeping batch shapes equal across ranks, which the
# gathered contrastive loss needs) and counted; this many failures in a row mean the data itself is broken.
_MAX_CONSECUTIVE_FAILURES = 50


class CsvCaptions(Dataset):
    """Rows of a CSV/TSV file: (PIL image, caption). Relative image paths are taken from the file's folder."""

    def __init__(self, path: str, img_key: str = "filepath", caption_key: str = "title", separator: str = "\t"):
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"CSV file not found: {path}")
        with p.open(newline="") as f:
            reader = csv.DictReader(f, delimiter=separator)
            columns = reader.fieldnames or []
            for key, flag in ((img_key, "--csv-img-key"), (caption_key, "--csv-caption-key")):
                if key not in columns:
                    raise ConfigError(f"{path}: no column {key!r} ({flag}); columns are {columns} "
                                      f"(separator {separator!r}, --csv-separator)")
            rows = [(r[img_key], r[caption_key]) for r in reader]
        if not rows:
            raise ConfigError(f"CSV file {path} has no rows")
        self.root = p.parent
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Tuple[Image.Image, str]:
        img_path, text = self.rows[index]
        full = Path(img_path) if Path(img_path).is_absolute() else self.root / img_path
        with Image.open(full) as im:
            return im.convert("RGB"), text


class ImageTextDataset(Dataset):
    """Applies the image transform and tokenizer; RNG per sample = f(seed, epoch, index), so augmentation
    is reproducible and a resumed run sees the same crops. Returns (image, ids, n_skipped)."""

    def __init__(self, source: Dataset, transform: Callable, tokenizer: Callable, seed: int = 0):
        self.source = source
        self.transform = transform
        self.tokenizer = tokenizer
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        for skipped in range(_MAX_CONSECUTIVE_FAILURES):
            i = (index + skipped) % len(self.source)
            try:
                image, text = self.source[i]
            except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for unreadable or truncated files
                log.warning("skipping unreadable sample %d: %s", i, e)
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(hash((self.seed, self.epoch, i)) & 0x7FFFFFFF)
                pixels = self.transform(image)
            return pixels, self.tokenizer([text])[0], skipped
        raise RuntimeError(f"{_MAX_CONSECUTIVE_FAILURES} unreadable samples in a row from index {index}")


def collate(batch: List) -> Tuple[torch.Tensor, torch.Tensor, int]:
    images, ids, skipped = zip(*batch)
    return torch.stack(images), torch.stack(ids), int(sum(skipped))


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
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.size, generator=g)[: self.per_rank() * self.world_size]
        mine = perm[self.rank::self.world_size]
        return iter(mine[self.start:].tolist())


def build_train_dataset(cfg, transform: Callable, tokenizer: Callable, image_size: int) -> Dataset:
    """The training source named by the config (CSV/TSV or synthetic), wrapped with transform + tokenizer."""
    kind = cfg.dataset_type
    if kind == "auto":
        if cfg.train_data is None:
            kind = "synthetic"
        elif cfg.train_data.endswith((".csv", ".tsv")):
            kind = "csv"
        elif ".tar" in cfg.train_data:
            kind = "webdataset"
        else:
            raise ConfigError(f"cannot tell the dataset type of {cfg.train_data!r}: set --dataset-type")
    if kind == "synthetic":
        from .synthetic import SyntheticCaptions

        source = SyntheticCaptions(cfg.train_num_samples or 10_000, image_size=image_size, seed=cfg.seed)
    elif kind == "csv":
        if not cfg.train_data:
            raise ConfigError("--train-data is required for --dataset-type csv")
        source = CsvCaptions(cfg.train_data, cfg.csv_img_key, cfg.csv_caption_key, cfg.csv_separator)
    else:
        raise ConfigError("--dataset-type webdataset is not supported yet: convert the shards to CSV, or use "
                          "open_clip_train for now")
    return ImageTextDataset(source, transform, tokenizer, seed=cfg.seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # numpy is a dependency, but seeding must not be why a run fails
        pass
