"""Embedding throughput of ``superclip index build`` against a plain open_clip loop on the same model, images and
batch, and of 2 torchrun processes against 1.

    python bench/search_embed.py [--images 768 --batch-size 64 --model SuperCLIP-Tiny --out /tmp/search_embed]

The images: synthetic scenes written once as PNG files at the model's image size. The model: ``--model`` with
random weights saved as a checkpoint (throughput does not depend on the weights). The baseline is what one writes
without superclip: for each batch, ``PIL.Image.open`` + the model's preprocessing in the main process, then
``encode_image(normalize=True)`` (the open_clip image tower's pooled output; the head is not run) under no_grad; no
tags, no files written. ``index build`` reports
images/s over its embedding stage (decoding in ``--workers`` data-loader workers, hashing, the head's top-5 tags,
writing parts); each figure is the best of ``--repeats`` runs, all in this one process or its children.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

import superclip
from superclip.weights import save_checkpoint


def write_images(folder: Path, n: int, size: int) -> list:
    from superclip.data.synthetic import SyntheticCaptions

    folder.mkdir(parents=True, exist_ok=True)
    data = SyntheticCaptions(n, image_size=size, seed=0)
    paths = []
    for i in range(n):
        p = folder / f"{i:05d}.png"
        if not p.exists():
            data[i][0].save(p)
        paths.append(p)
    return paths


@torch.no_grad()
def model_and_images(model_name: str, out: Path, n: int):
    """The benchmarks' set-up: a seeded untrained model saved as ``out/model.pt`` and ``n`` PNG scenes at its input
    size under ``out/images``. Returns (model, image size, checkpoint path, image paths)."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = superclip.create_model(model_name)
    size = model.clip.visual.image_size
    size = size if isinstance(size, int) else size[0]
    ckpt = out / "model.pt"
    save_checkpoint(ckpt, model, config=model.config)
    return model, size, ckpt, write_images(out / "images", n, size)


def plain_loop(model, preprocess, paths, batch_size: int) -> float:
    model.eval()
    t0 = time.perf_counter()
    for s in range(0, len(paths), batch_size):
        x = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths[s:s + batch_size]])
        model.encode_image(x, normalize=True)  # the open_clip tower's pooled output, normalised; no head
    return len(paths) / (time.perf_counter() - t0)


def index_build(launcher: list, ckpt: Path, images: Path, out: Path, batch_size: int, workers: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [*launcher, "index", "build", str(images), "--out", str(out), "--pretrained", str(ckpt), "--batch-size",
           str(batch_size), "--workers", str(workers), "--no-progress", "--part-size", str(2 * batch_size)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
                          if "torchrun" in launcher[0] else None)
    if done.returncode:
        sys.exit(done.stderr[-2000:])
    return float(re.search(r"\(([\d.]+) images/s\)", done.stdout).group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=768)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--model", default="SuperCLIP-Tiny")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="/tmp/search_embed")
    args = ap.parse_args()
    out = Path(args.out)
    model, size, ckpt, paths = model_and_images(args.model, out, args.images)
    preprocess = superclip.get_transforms(model)[1]
    print(f"{args.images} PNG scenes at {size} px, {args.model}, batch {args.batch_size}, "
          f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}")
    plain = max(plain_loop(model, preprocess, paths, args.batch_size) for _ in range(args.repeats))
    one = max(index_build([sys.executable, "-m", "superclip"], ckpt, out / "images", out / "idx1", args.batch_size,
                          args.workers) for _ in range(args.repeats))
    torchrun = str(Path(sys.executable).parent / "torchrun")
    two = max(index_build([torchrun, "--nproc_per_node", "2", "-m", "superclip"], ckpt, out / "images",
                          out / "idx2", args.batch_size, args.workers) for _ in range(args.repeats))
    print(f"plain open_clip loop:              {plain:8.1f} images/s")
    print(f"superclip index build, 1 process:  {one:8.1f} images/s  (ratio {one / plain:.2f} vs the plain loop)")
    print(f"superclip index build, 2 processes:{two:8.1f} images/s  (ratio {two / one:.2f} vs 1 process)")


if __name__ == "__main__":
    main()
