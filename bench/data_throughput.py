"""Samples/s of our shard pipeline against the ``webdataset`` package's own, on the same shards and transform.

    pip install webdataset            # only for this bench (make bench installs it)
    python bench/data_throughput.py [--shards 16 --per-shard 500 --workers 2 --batch-size 64 --samples 6000]

Both pipelines read the same shards (synthetic scenes: 64 px PNG + captions, written once into --out), decode
the PNG, apply the same training transform (open_clip's, at --image-size) and tokenize the caption, in a
torch DataLoader with --workers processes and batches of --batch-size; the clock runs over --samples samples
after one warm-up batch per worker, in alternating rounds (--rounds), and each pipeline's median round is
reported. Ours: ``ShardStream`` + ``ImageTextStream`` (what ``superclip train`` runs: per-shard permutation,
positions for exact resume, bad samples skipped and counted). Theirs: ``wds.WebDataset(urls, shardshuffle=...)
.shuffle(1000).decode("pil").to_tuple("png", "txt").map_tuple(transform, tokenize)`` with ``wds.WebLoader``.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from common import make_shards

import superclip
from superclip.data.loader import CaptionPolicy, ImageTextStream, SampleEncoder, collate
from superclip.data.webdataset import ShardStream, expand_sources


def ours(pattern, transform, tokenizer, workers, batch_size):
    stream = ShardStream(expand_sources(pattern), seed=0, workers=workers)
    data = ImageTextStream(stream, SampleEncoder(transform, tokenizer, CaptionPolicy()), "txt", None)
    return torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                                       persistent_workers=False)


def theirs(pattern, transform, tokenizer, workers, batch_size):
    import webdataset as wds

    urls = expand_sources(pattern)[0]
    data = (wds.WebDataset(urls, shardshuffle=len(urls), nodesplitter=wds.single_node_only, empty_check=False)
            .shuffle(1000).decode("pil").to_tuple("png", "txt")
            .map_tuple(transform, lambda text: tokenizer([text])[0]).batched(batch_size, partial=False))
    return wds.WebLoader(data, batch_size=None, num_workers=workers)


def rate(loader, samples: int, warmup: int) -> float:
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    n, t0 = 0, time.perf_counter()
    while n < samples:
        batch = next(it)
        n += len(batch[0])
    return n / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--per-shard", type=int, default=500)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--samples", type=int, default=6000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--out", default="/tmp/data_throughput")
    args = p.parse_args()
    import webdataset

    pattern = make_shards(Path(args.out) / "shards", args.shards, args.per_shard)
    cfg = superclip.resolve_model_config("SuperCLIP-Tiny")
    cfg["vision_cfg"]["image_size"] = args.image_size
    model = superclip.build_model(cfg)
    transform, _ = superclip.get_transforms(model)
    tokenizer = superclip.get_tokenizer(cfg)
    results = {"ours": [], "webdataset": []}
    for _ in range(args.rounds):
        for name, make in (("ours", ours), ("webdataset", theirs)):
            loader = make(pattern, transform, tokenizer, args.workers, args.batch_size)
            results[name].append(rate(loader, args.samples, warmup=max(1, args.workers)))
            del loader
    med = {k: statistics.median(v) for k, v in results.items()}
    print(json.dumps({"workers": args.workers, "batch_size": args.batch_size, "image_size": args.image_size,
                      "samples_per_round": args.samples, "webdataset_version": webdataset.__version__,
                      "samples_per_s": {k: round(v, 1) for k, v in med.items()},
                      "rounds": {k: [round(x, 1) for x in v] for k, v in results.items()},
                      "ratio_ours_over_webdataset": round(med["ours"] / med["webdataset"], 3)}))


if __name__ == "__main__":
    main()
