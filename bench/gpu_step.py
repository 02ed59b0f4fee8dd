"""Samples/s and model FLOPs utilisation (MFU) of a SuperCLIP train step, for a GPU machine.

    python bench/gpu_step.py [--model SuperCLIP-ViT-B-16] [--batch-size 256] [--steps 20] [--compile]
    python bench/gpu_step.py --device cpu --model SuperCLIP-Tiny --batch-size 8 --steps 2   # a dry run

A step is the trainer's: forward, loss (contrastive + λ=1 classification), backward and fused AdamW
(``superclip.train.engine.train_step``), bf16 autocast, on random images and captions. Time is taken with
CUDA events over ``--steps`` steps after ``--warmup``. Model FLOPs per sample are 3 x 2 x the multiply-adds of
``superclip.flops.count_macs`` (dense layers and attention matmuls, the head included; forward + backward);
MFU divides the achieved rate by two peaks: the datasheet's dense bf16 rate (``--peak-tflops``, H100/H200 SXM:
989.5) and a square bf16 matmul measured in the same run. It also times λ=0 for the head's overhead.
"""
import argparse
import json
import time

import torch
from common import random_batch, setting

import superclip
from superclip.flops import count_macs
from superclip.train.engine import train_step


def timed(fn, steps: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` over ``steps`` calls."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(steps):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3 / steps
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def matmul_tflops(device: torch.device, n: int = 8192, steps: int = 20) -> float:
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    a @ b
    return 2 * n ** 3 / timed(lambda: a @ b, steps, device) / 1e12


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="SuperCLIP-ViT-B-16")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cuda")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (compile time reported)")
    p.add_argument("--peak-tflops", type=float, default=989.5, help="datasheet dense bf16 TFLOP/s")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    macs = count_macs(args.model)
    flops_per_sample = {w: 6 * sum(v for part, counts in macs.items() if w or part != "head"
                                   for v in counts.values()) for w in (0.0, 1.0)}
    result = {"model": args.model, "batch_size": args.batch_size, "device": str(device),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    for weight in (1.0, 0.0):
        torch.manual_seed(0)
        model, criterion, optimizer = setting(superclip.create_model(args.model).to(device).train(), weight, device)
        images, ids = random_batch(model, args.model, args.batch_size, device)
        runner = torch.compile(model) if args.compile else model

        def autocast():
            return torch.autocast(device.type, dtype=torch.bfloat16)

        def step(runner=runner, optimizer=optimizer):
            train_step(runner, criterion, optimizer, images, ids, autocast=autocast)

        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        first = time.perf_counter() - t0
        for _ in range(args.warmup):
            step()
        seconds = timed(step, args.steps, device)
        key = f"lambda={weight:g}"
        result[key] = {"step_ms": 1e3 * seconds, "samples_per_s": args.batch_size / seconds, "first_step_s": first,
                       "model_tflops": flops_per_sample[weight] * args.batch_size / seconds / 1e12}
        if device.type == "cuda":
            result[key]["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
            torch.cuda.reset_peak_memory_stats(device)
        del model, optimizer, runner, step
    if device.type == "cuda":
        measured = matmul_tflops(device)
        result["matmul_bf16_tflops"] = measured
        for key in ("lambda=1", "lambda=0"):
            result[key]["mfu_datasheet"] = result[key]["model_tflops"] / args.peak_tflops
            result[key]["mfu_measured_matmul"] = result[key]["model_tflops"] / measured
    result["cls_overhead"] = result["lambda=1"]["step_ms"] / result["lambda=0"]["step_ms"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
