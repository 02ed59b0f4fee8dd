"""``superclip data synth``: the synthetic families as shards, hard-negative sets and masks; ``superclip data
icons``: a corpus of real drawings from the npm package @iconify/json."""
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


def _cmd_data_icons(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..data.icon_corpus import CorpusOptions, build_corpus

    opts = CorpusOptions(**{k: getattr(args, k) for k in CorpusOptions.__dataclass_fields__})
    for key, low in (("image_size", 8), ("max_per_set", 1), ("shard_size", 1), ("zeroshot_classes", 2),
                     ("zeroshot_per_class", 1), ("retrieval_items", 2), ("compositional_per_type", 1),
                     ("dense_classes", 1), ("dense_train", 1), ("dense_test", 1)):
        if getattr(opts, key) < low:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= {low}, got {getattr(opts, key)}")
    if args.fetch_retries is not None and args.fetch_retries < 0:
        raise ConfigError(f"--fetch-retries must be >= 0, got {args.fetch_retries}")
    bars = []

    def progress(stage: str, total: int):
        if bars:
            bars.pop().close()
        bars.append(tqdm(total=total, desc=stage, disable=not args.progress, file=sys.stderr))
        return bars[-1].update

    try:
        m = build_corpus(Path(args.out), args.tarball, args.iconify_version, args.sha256, args.registry,
                         args.fetch_retries, args.sets, args.held_out, opts, progress)
    finally:
        if bars:
            bars.pop().close()
    out = Path(args.out)
    if m["skipped"]:
        named = ", ".join(f"{s['icon']} ({s['reason']})" for s in m["skipped"][:3])
        more = f" and {len(m['skipped']) - 3} more" if len(m["skipped"]) > 3 else ""
        print(f"skipped {len(m['skipped'])} icons that did not render: {named}{more} (all in {out}/manifest.json)")
    print(f"wrote {out}: {m['train_samples']} training icons from {len(m['train_sets'])} sets in {len(m['shards'])} "
          f"shards; held out {len(m['held_out_sets'])} sets: zero-shot {len(m['zeroshot'])} classes "
          f"({sum(m['zeroshot'].values())} images), retrieval {m['retrieval_items']}, hard negatives "
          + ", ".join(f"{k} {n}" for k, n in m["compositional"].items())
          + f", dense {len(m['dense_classes'])} classes; licences in {out}/LICENSES")
    last = max(0, len(m["shards"]) - 1)
    print(f"train: superclip train --train-data '{out}/train-{{000000..{last:06d}}}.tar' --train-num-samples "
          f"{m['train_samples']} --dataset-type webdataset")
    print(f"evaluate: superclip eval --pretrained CKPT --zeroshot-data {out}/zeroshot --templates "
          f"{out}/zeroshot/templates.txt --retrieval-data {out}/retrieval/retrieval.csv --compositional "
          f"{out}/compositional --segmentation-probe-train {out}/dense/train --segmentation-probe-test {out}/dense/test")
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
    _add_icons_parser(data_sub)


def _add_icons_parser(data_sub) -> None:
    from ..config import ICONIFY_VERSION

    p = data_sub.add_parser("icons", help="an icon corpus from the npm package @iconify/json: training shards, held-out "
                                          "zero-shot / retrieval / hard-negative / dense sets, LICENSES")
    p.add_argument("--out", required=True, help="output folder (absent or empty; written whole or not at all)")
    p.add_argument("--tarball", default=None, help="a @iconify/json tarball you already have (else fetched with npm)")
    p.add_argument("--iconify-version", default=ICONIFY_VERSION, help="the @iconify/json version to fetch")
    p.add_argument("--sha256", default=None,
                   help="the tarball's expected sha256 (default: the one known for the pinned version)")
    p.add_argument("--registry", default=None, help="npm registry URL (npm's --registry)")
    p.add_argument("--fetch-retries", type=int, default=None, help="npm's --fetch-retries")
    p.add_argument("--sets", nargs="+", default=None, metavar="PREFIX",
                   help="training sets (default: every usable set not held out; emoji sets are never used)")
    p.add_argument("--held-out", nargs="+", default=None, metavar="PREFIX",
                   help="held-out sets, with every set of the same author (default: tabler ph ri bi carbon iconoir "
                        "heroicons mingcute)")
    p.add_argument("--max-per-set", type=int, default=500, help="training icons drawn from each training set")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--zeroshot-classes", type=int, default=30, help="concepts of the zero-shot set")
    p.add_argument("--zeroshot-per-class", type=int, default=40)
    p.add_argument("--retrieval-items", type=int, default=1000)
    p.add_argument("--compositional-per-type", type=int, default=300, help="hard negatives per type")
    p.add_argument("--dense-classes", type=int, default=10, help="concept classes of the dense set's masks")
    p.add_argument("--dense-train", type=int, default=300, help="dense scenes to fit the probe on")
    p.add_argument("--dense-test", type=int, default=100, help="dense scenes to score it on")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_cmd_data_icons)
