"""Pieces the benchmarks share: a random batch and one λ setting (cls_overhead.py, gpu_step.py), synthetic
shards (resume_cost.py, data_throughput.py)."""
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

import superclip
from superclip.config import TrainConfig
from superclip.train.optim import build_optimizer


def random_batch(model, model_name: str, batch_size: int, device: torch.device):
    """(images (B, 3, S, S) ~ N(0, 1), token ids (B, 77) of short distinct captions) on ``device``."""
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    images = torch.randn(batch_size, 3, size, size, device=device)
    words = ("dog", "cat", "car", "tree")
    ids = superclip.get_tokenizer(model_name)([f"a photo of a {words[i % 4]} number {i}" for i in range(batch_size)])
    return images, ids.to(device)


def setting(model, weight: float, device: torch.device):
    """(model, criterion, optimizer) for class-loss weight ``weight``: ``model`` itself, with its head frozen for
    λ = 0 as the trainer does, and the trainer's AdamW."""
    if weight == 0:
        model.head.requires_grad_(False)
    criterion = superclip.SuperCLIPLoss(vocab_size=model.vocab_size, cls_weight=weight).to(device).train()
    return model, criterion, build_optimizer(model, TrainConfig(lr=1e-5))


def _write(args):
    from superclip.data.synth_sets import write_shards

    out, start, per_shard, index = args
    path = Path(out) / f"train-{index:06d}.tar"
    if not path.exists():
        tmp = Path(out) / f".part-{index}"
        written = write_shards(str(tmp), per_shard, 64, seed=index, split="train", shard_size=per_shard,
                               overwrite=True)
        os.replace(written[0], path)
        tmp.rmdir()
    return str(path)


def make_shards(folder: Path, shards: int, per_shard: int) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    todo = [(str(folder), i * per_shard, per_shard, i) for i in range(shards)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(_write, todo))
    print(f"shards ready in {folder} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return str(folder / f"train-{{000000..{shards - 1:06d}}}.tar")
