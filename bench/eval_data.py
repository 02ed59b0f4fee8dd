"""Writes evaluation data from the synthetic scenes: an ImageFolder tree for zero-shot (``--imagenet-val``)
and a retrieval TSV (``--val-data``), for the GPU check and for trying evaluation during training.

    python bench/eval_data.py OUT [--images 200] [--image-size 64]
"""
import argparse
from pathlib import Path

from superclip.data.synthetic import SyntheticCaptions, zero_shot_task


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--image-size", type=int, default=64)
    args = p.parse_args()
    out = Path(args.out)
    images, labels, classnames, _ = zero_shot_task("colour", args.images, args.image_size, seed=0)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = out / "zeroshot" / classnames[label].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:05d}.png")
    data = SyntheticCaptions(args.images, image_size=args.image_size, seed=1, split="test")
    rows = ["filepath\ttitle"]
    (out / "retrieval").mkdir(parents=True, exist_ok=True)
    for i in range(args.images):
        image, text = data[i]
        image.save(out / "retrieval" / f"{i:05d}.png")
        rows.append(f"retrieval/{i:05d}.png\t{text}")
    (out / "val.tsv").write_text("\n".join(rows) + "\n")
    print(f"wrote {out}/zeroshot ({len(classnames)} classes, {args.images} images) and {out}/val.tsv")


if __name__ == "__main__":
    main()
