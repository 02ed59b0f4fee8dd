"""``superclip data synth``: the synthetic families as shards, hard-negative sets and masks."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError

MAX_IMAGE_SIZE = 4096  # 48 MiB an RGB image; a typo of 100000 would ask for 30 GB each


def _cmd_data_synth_sets(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..data.synth_sets import write_compositional, write_masks

    out = Path(args.out)
    if args.compositional and args.test_samples < 1:  # its items are test images: 0 writes a set no eval can read
        raise ConfigError(f"--compositional draws its items from the test split: give --test-samples of at least 1, "
                          f"got {args.test_samples}")
    if args.masks and min(args.train_samples, args.test_samples) < 1:
        raise ConfigError("--masks writes a train split to fit the probe on and a test split to score it: give "
                          f"--train-samples and --test-samples of at least 1, got {args.train_samples} and "
                          f"{args.test_samples}")
    targets = ([out / "compositional"] if args.compositional else []) + \
        ([out / "masks" / "train", out / "masks" / "test"] if args.masks else [])
    taken = [t for t in targets if t.is_dir() and any(t.iterdir())]
    if taken:  # before anything is written: a refusal half-way would leave the sets before it written
        raise ConfigError(f"{taken[0]} already holds files; remove it or choose another --out (a set is never "
                          "written over)")
    if args.compositional:
        with tqdm(total=args.test_samples, desc="compositional", disable=not args.progress, file=sys.stderr) as bar:
            counts = write_compositional(str(out / "compositional"), args.family, args.test_samples, args.image_size,
                                         args.seed, bar.update)
        print(f"wrote {out / 'compositional'}: " + ", ".join(f"{k} {n}" for k, n in counts.items()) +
              f"; evaluate with: superclip eval --pretrained CKPT --compositional {out / 'compositional'}")
    if args.masks:
        for split, n in (("train", args.train_samples), ("test", args.test_samples)):
            with tqdm(total=n, desc=f"masks {split}", disable=not args.progress, file=sys.stderr) as bar:
                write_masks(str(out / "masks" / split), args.family, n, args.image_size, args.seed, split, bar.update)
        masks = out / "masks"
        print(f"wrote {masks}/{{train,test}}; evaluate with: superclip eval --pretrained CKPT "
              f"--segmentation-probe-train {masks / 'train'} --segmentation-probe-test {masks / 'test'}")
    return 0


def _cmd_data_synth(args: argparse.Namespace) -> int:
    splits = (("train", args.train_samples), ("val", args.val_samples), ("test", args.test_samples))
    for flag, value, low in (("--shard-size", args.shard_size, 1), ("--image-size", args.image_size, 1),
                             *((f"--{split}-samples", n, 0) for split, n in splits)):
        if value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}")
    if args.image_size > MAX_IMAGE_SIZE:
        raise ConfigError(f"--image-size must be <= {MAX_IMAGE_SIZE}, got {args.image_size} ({args.image_size}^2 RGB "
                          f"pixels are {3 * args.image_size ** 2 / 2 ** 30:.1f} GiB an image)")
    if not (args.compositional or args.masks) and not any(n for _, n in splits):
        raise ConfigError("nothing to write: --train-samples, --val-samples and --test-samples are all 0")
    try:  # before any shard is drawn: a folder that cannot be made is one line
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out: cannot create folder {args.out}: {e.strerror or e}") from None
    if args.compositional or args.masks:
        return _cmd_data_synth_sets(args)
    from ..data.synth_sets import shard_paths, write_shards

    taken = [p for split, n in splits if n for p in shard_paths(args.out, n, split, args.shard_size)
             if p.exists()]
    if taken and not args.overwrite:  # before writing any split
        more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
        raise ConfigError(f"{taken[0]} exists{more}: pass --overwrite to replace it, or choose another --out")
    paths = []
    for split, n in splits:
        if n:
            paths += write_shards(args.out, n, args.image_size, args.seed, split, args.shard_size, args.family,
                                  overwrite=args.overwrite)
    written = ", ".join(f"{split} {n}" for split, n in splits if n)
    line = f"wrote {len(paths)} shards to {args.out} (samples: {written})"
    if args.train_samples:  # a command for shards that were written, only
        line += (f"; train on them with: superclip train --train-data '{args.out}/train-{{000000.."
                 f"{-(-args.train_samples // args.shard_size) - 1:06d}}}.tar' --train-num-samples {args.train_samples}")
    print(line)
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("data", help="data tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("synth", help="write a synthetic family as webdataset shards, to inspect or train on")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--family", default="scenes", choices=["scenes", "textures"],
                   help="scenes (shapes in colours) or textures (patterns in inks)")
    p.add_argument("--train-samples", type=int, default=10000)
    p.add_argument("--val-samples", type=int, default=0)
    p.add_argument("--test-samples", type=int, default=1000)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace shards of the same names in --out")
    p.add_argument("--compositional", action="store_true",
                   help="instead of shards: OUT/compositional, hard negatives of --test-samples test images in "
                        "SugarCrepe's layout (superclip eval --compositional)")
    p.add_argument("--masks", action="store_true",
                   help="instead of shards: OUT/masks/{train,test}, images + index-PNG masks (--train-samples, "
                        "--test-samples; superclip eval --segmentation-probe-train/-test)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_cmd_data_synth)
