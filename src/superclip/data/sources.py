"""Where a run's data is and which reader it needs, told from the config and the file system alone (no torch, so
the command line can check it before the heavy imports)."""
from __future__ import annotations

import glob
import math
import os
import random
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from braceexpand import braceexpand

from ..errors import ConfigError
from .csv import read_captions

PIPE = "pipe:"


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


@dataclass
class TrainData:
    """A run's training data, checked: its kind, the caption policy, and the shard sources and their weights or
    the CSV's rows."""

    kind: str
    policy: CaptionPolicy
    shards: List[List[str]] = field(default_factory=list)
    weights: Optional[List[float]] = None
    rows: Optional[List[Tuple[str, str, Optional[str]]]] = None


def check_train_data(cfg) -> TrainData:
    """Every check of the training data that needs no torch, in one order for the trainer and the command line's
    early check: the kind, the flags it needs, the shard pattern (each source matches a file) and upsampling
    factors, or the CSV's columns, captions and image paths. Each mistake is a one-line ConfigError."""
    kind = dataset_kind(cfg)
    policy = CaptionPolicy(cfg.contrastive_caption, cfg.class_caption, cfg.long_caption_ratio)
    if kind == "webdataset":
        if not cfg.train_data:
            raise ConfigError("--train-data is required for --dataset-type webdataset")
        if not cfg.train_num_samples:
            raise ConfigError("--train-num-samples is required for webdataset shards (samples per epoch)")
        if policy.needs_long and not cfg.long_caption_key:
            raise ConfigError("a long caption is asked for: name it with --long-caption-key (e.g. long.txt)")
        shards = expand_sources(cfg.train_data)
        return TrainData(kind, policy, shards=shards, weights=upsampling_factors(cfg, len(shards)))
    if kind.startswith("synthetic"):
        return TrainData(kind, policy)
    if kind != "csv":
        raise ConfigError(f"unknown dataset type {kind!r}")
    if not cfg.train_data:
        raise ConfigError("--train-data is required for --dataset-type csv")
    if policy.needs_long and not cfg.long_caption_key:
        raise ConfigError("a long caption is asked for: name its column with --long-caption-key")
    rows = read_captions(cfg.train_data, cfg.csv_img_key, cfg.csv_caption_key, cfg.csv_separator,
                         cfg.long_caption_key)
    return TrainData(kind, policy, rows=rows)
