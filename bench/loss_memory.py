"""Peak memory (and time) of the classification loss, forward + backward: ours (sparse targets) vs a dense form.

    python bench/loss_memory.py [--batch 4096] [--vocab 49408]

The dense form builds (B, V) multi-hot targets, weights and normalises them and takes log_softmax, as a direct
reading of the formula would. Each variant runs in a fresh process; the figure is the growth of the process's
peak resident memory over what the inputs (logits, ids) already take, so both start from the same baseline.
On a GPU the same script reports torch.cuda.max_memory_allocated instead.
"""
import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def dense_class_loss(logits, token_ids, weights):
    y = torch.zeros_like(logits).scatter_(1, token_ids, 1.0)
    target = F.normalize(y * weights.to(logits.dtype), p=1, dim=1)
    return -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()


def run_one(variant, batch, vocab, device):
    from superclip.loss import token_classification_loss

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, 77), generator=g).to(device)
    weights = torch.rand(vocab, dtype=torch.float64, generator=g).to(device)
    logits = torch.randn(batch, vocab, generator=g).to(device).requires_grad_()
    fn = token_classification_loss if variant == "sparse" else dense_class_loss
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    loss = fn(logits, ids, weights)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    print(json.dumps({"variant": variant, "peak_bytes": peak, "seconds": time.perf_counter() - t0,
                      "loss": loss.item()}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=49408)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--variant", choices=["sparse", "dense"])
    args = p.parse_args()
    if args.variant:
        return run_one(args.variant, args.batch, args.vocab, args.device)
    res = {}
    for variant in ("dense", "sparse"):
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--batch", str(args.batch),
                              "--vocab", str(args.vocab), "--device", args.device],
                             capture_output=True, text=True, check=True)
        res[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    one = args.batch * args.vocab * 4 / 2**20
    print(f"class loss forward+backward, B={args.batch}, V={args.vocab}, {args.device} "
          f"(one (B, V) float32 tensor = {one:.0f} MiB)")
    for variant in ("dense", "sparse"):
        r = res[variant]
        print(f"  {variant:6s} peak +{r['peak_bytes'] / 2**20:8.0f} MiB   {r['seconds']:.2f} s   loss {r['loss']:.6f}")
    print(f"  ratio sparse/dense: memory {res['sparse']['peak_bytes'] / res['dense']['peak_bytes']:.3f}x, "
          f"time {res['sparse']['seconds'] / res['dense']['seconds']:.3f}x, "
          f"|loss difference| {abs(res['sparse']['loss'] - res['dense']['loss']):.2e}")


if __name__ == "__main__":
    main()
