"""A model pass on one torch thread against two: why ``serve`` runs its passes on every core but one.

    python bench/model_threads.py [--model SuperCLIP-ViT-B-32 --tower image --rounds 2]

Random seeded weights (the cost of a pass does not depend on them); per thread count and batch (1, 8): the median of
4 passes after one warm-up, rounds alternating the thread counts.
"""
import argparse
import time

import numpy as np
import torch

import superclip


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="SuperCLIP-ViT-B-32")
    ap.add_argument("--tower", default="image", choices=("image", "text"))
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = superclip.create_model(args.model).eval()
    if args.tower == "image":
        size = model.clip.visual.image_size
        size = size if isinstance(size, int) else size[0]
        x, encode = torch.randn(8, 3, size, size), model.encode_image
    else:
        x, encode = torch.randint(1, 49000, (8, 77)), model.encode_text

    def median_ms(threads: int, batch: torch.Tensor) -> float:
        torch.set_num_threads(threads)
        times = []
        with torch.no_grad():
            encode(batch, normalize=True)
            for _ in range(4):
                t0 = time.perf_counter()
                encode(batch, normalize=True)
                times.append(time.perf_counter() - t0)
        return 1000 * float(np.median(times))

    for r in range(args.rounds):
        for threads in (1, 2):
            print(f"round {r}, {threads} thread(s): batch 1 {median_ms(threads, x[:1]):.0f} ms, batch 8 "
                  f"{median_ms(threads, x):.0f} ms", flush=True)


if __name__ == "__main__":
    main()
