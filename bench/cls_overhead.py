"""Cost of the classification term: train-step time with λ = 1 vs λ = 0, same model, batch and data.

    python bench/cls_overhead.py [--model SuperCLIP-ViT-B-32] [--batch-size 32] [--steps 6] [--device cpu]
        [--precision fp32|amp_bf16]

A step is forward + backward + AdamW step (``superclip.train.engine.train_step``, the trainer's optimizer),
each setting on its own copy of the model with its own optimizer (for λ = 0 the head is frozen, as the
trainer does). The two
settings alternate step by step after warm-up (so drifts in machine load hit both alike); the figure is the
ratio of median step times. On a GPU: ``--model SuperCLIP-ViT-B-16 --batch-size 256 --precision amp_bf16``.
"""
import argparse
import contextlib
import copy
import statistics
import time

import torch
from common import random_batch, setting

import superclip
from superclip.train.engine import train_step


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="SuperCLIP-ViT-B-32")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "amp_bf16"])
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = superclip.create_model(args.model).to(device).train()
    images, ids = random_batch(model, args.model, args.batch_size, device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.precision == "amp_bf16" \
        else contextlib.nullcontext
    setups = {w: setting(copy.deepcopy(model), w, device) for w in (0.0, 1.0)}  # same initial weights
    del model
    times = {0.0: [], 1.0: []}
    for i in range(args.warmup + args.steps):
        for weight, (m, crit, opt) in setups.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            train_step(m, crit, opt, images, ids, autocast=autocast)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times[weight].append(time.perf_counter() - t0)
    med = {w: statistics.median(t) for w, t in times.items()}
    print(f"{args.model}, batch {args.batch_size}, {args.precision}, {device}: median train step "
          f"λ=0 {med[0.0] * 1e3:.1f} ms, λ=1 {med[1.0] * 1e3:.1f} ms over {args.steps} steps each")
    print(f"cls overhead: {med[1.0] / med[0.0]:.4f}x")


if __name__ == "__main__":
    main()
