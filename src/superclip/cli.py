"""The ``superclip`` command. The CLI owns the console: library modules only log.

User mistakes (``SuperCLIPError``) print one line on stderr and exit with code 2; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

from .errors import ConfigError, SuperCLIPError


def _cmd_flops(args: argparse.Namespace) -> int:
    from .flops import flops_table

    for name in args.models:
        t = flops_table(name)
        print(f"{name}: multiply-adds per image-text pair (GMACs; the paper's Table 3 labels these GFLOPs)")
        print(f"  vision  {t['vision_gmacs']:10.3f}")
        print(f"  text    {t['text_gmacs']:10.3f}")
        print(f"  head    {t['head_gmacs']:10.3f}   ({t['head_share_percent']:.3f}% of the total)")
        print(f"  total   {t['total_gmacs']:10.3f}   (+{t['attention_gmacs']:.3f} in attention score/value "
              "matmuls, not counted by the paper's convention)")
        if args.json:
            print(json.dumps({"model": name, **t}))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export.staging import existing_files, staged
    from .weights import load_model

    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{args.out_dir} exists and is not a folder: name a folder to export into")
    present = existing_files(out)
    if present and not args.overwrite:  # before any work: a user's README.md or config.json is never replaced
        shown = ", ".join(present[:4]) + (f" and {len(present) - 4} more" if len(present) > 4 else "")
        raise ConfigError(f"{out} is not empty ({shown}): export into a new or empty folder, or add --overwrite to "
                          "replace the files the export writes (other files are left alone)")
    model, stats, info = load_model(args.model, pretrained=args.checkpoint, cache_dir=args.cache_dir)
    model.eval()
    if args.format == "transformers":
        from .export.to_transformers import export_transformers

        with staged(out) as stage:
            export_transformers(model, stage, stats)
        how = f"transformers.CLIPModel.from_pretrained('{out}') (or CLIPVisionModel)"
    elif args.format == "onnx":
        from .export.to_onnx import export_onnx

        with staged(out) as stage:
            export_onnx(model, stage)
        how = f"onnxruntime.InferenceSession('{out}/image_encoder.onnx') and text_encoder.onnx"
    else:
        from .export import export_folder, run_metrics

        train = dict(info.get("train_config") or {}, steps=info.get("step"), world_size=info.get("world_size"))
        metrics = run_metrics(info.get("path"), info.get("step")) if info.get("train_config") else None
        with staged(out) as stage:
            export_folder(model, stage, stats, train if info.get("train_config") else None, metrics,
                          name=out.resolve().name)
        how = f"open_clip.create_model_and_transforms('local-dir:{out}'); superclip --pretrained {out} (with the head)"
    print(f"wrote {args.format} export {out}: {how}")
    if args.push_to_hub:
        from .hub import push_folder

        print(f"pushed to hf-hub:{args.push_to_hub}: {push_folder(out, args.push_to_hub, args.private)}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .model import list_models

    print("\n".join(list_models()))
    return 0


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, open_clip_train's spelling; only flags given on the line override."""
    import dataclasses

    from .config import REFUSED, TrainConfig, refusal

    p.add_argument("--config", default=None, help="YAML file of training keys (open_clip_train names)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")

    class Refuse(argparse.Action):  # an open_clip_train option we do not take: say why, on one line
        def __call__(self, parser, namespace, values, option_string=None):
            parser.error(refusal(self.dest))

    for name in REFUSED:
        p.add_argument("--" + name.replace("_", "-"), dest=name, nargs="*", action=Refuse, help=argparse.SUPPRESS)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kwargs = {"default": argparse.SUPPRESS, "help": f.metadata.get("help", ""), "dest": f.name}
        if "bool" in f.type:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            caster = float if "float" in f.type else int if "int" in f.type else str
            p.add_argument(flag, type=caster, **kwargs)


def _cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import distributed
    from .config import FIELD_NAMES, load_yaml, make_config
    from .errors import TrainingInterrupted
    from .plot import plot_losses
    from .train.run_folder import read_metrics
    from .train.trainer import Trainer

    overrides = {k: v for k, v in vars(args).items() if k in FIELD_NAMES}
    cfg = make_config(load_yaml(args.config) if args.config else {}, overrides)
    trainer = None
    try:
        trainer = Trainer(cfg)
        main_process = distributed.is_main_process()
        bar = tqdm(total=trainer.total_steps, initial=trainer.progress.step, unit="step", dynamic_ncols=True,
                   disable=not (main_process and cfg.progress))

        def on_step(step, m):
            bar.update(1)
            bar.set_postfix(loss=f"{m['loss']:.3f}", cls=f"{m['class_loss']:.3f}", sps=f"{m['samples_per_s']:.0f}")

        interrupted = None
        try:
            history = trainer.fit(on_step)
        except TrainingInterrupted as e:
            history, interrupted = [], e
        finally:
            bar.close()
        run_dir, steps, total = trainer.dir, trainer.progress.step, trainer.total_steps
    finally:
        if trainer is not None:
            trainer.close()
        del trainer  # its model (under FSDP2, DTensors on the groups' device mesh) goes before the groups do
        distributed.destroy()
    if main_process:
        logged = [m for m in read_metrics(run_dir / "metrics.jsonl") if "loss" in m]  # the whole run's steps
        if logged:
            plot_losses(logged, run_dir / "loss.png", title=run_dir.name)
    if interrupted is not None:
        if main_process:
            print(f"superclip train: stopped by {interrupted}", file=sys.stderr)
        return 128 + interrupted.signum
    if main_process and not history:  # a resume of a run that had already reached its end
        print(f"nothing to train: run folder {run_dir} is at step {steps}, its end is step {total} (--epochs "
              f"{cfg.epochs}{f', --max-steps {cfg.max_steps}' if cfg.max_steps else ''}); raise --epochs or "
              "--max-steps to train on")
    elif main_process:
        print(f"trained {steps} steps; final loss {history[-1]['loss']:.4f}; "
              f"run folder {run_dir} (checkpoints/, metrics.jsonl, loss.png)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from tqdm import tqdm

    from .demo import run_regimes

    if args.samples < max(args.batches):  # every run trains at least one whole batch: it would see more
        raise ConfigError(f"--samples {args.samples} is less than one batch of {max(args.batches)} (--batches "
                          f"{' '.join(map(str, args.batches))}): give --samples of at least {max(args.batches)}")
    out = Path(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    total = sum(2 * max(1, args.samples // b) for b in args.batches)
    bar = tqdm(total=total, unit="step", dynamic_ncols=True)

    def on_step(name, step, m):
        bar.set_description(name)
        bar.update(1)
        bar.set_postfix(loss=f"{m['loss']:.3f}")

    t0 = time.perf_counter()
    report = run_regimes(out, samples=args.samples, batches=args.batches, seed=args.seed, lr=args.lr,
                         eval_samples=args.eval_samples, family=args.family, on_step=on_step)
    bar.close()
    regimes = report["regimes"]
    first = next(iter(regimes.values()))["runs"]
    # of the hard negatives, the overall figure (report.json holds them per type)
    keys = [k for k in first["CLIP"]["metrics"] if not k.startswith("compositional_") or k == "compositional_acc"]
    head = f"{'test split, %':28s}" + "".join(f" {label + ': CLIP':>15s} {'SuperCLIP':>9s} {'diff':>6s}"
                                              for label in regimes)
    for other in report["lost"]:
        head += f"  {'lost ' + other.replace('batch ', 'at b') + ': CLIP':>18s} {'SuperCLIP':>9s}"
    print("\n" + head)
    for key in keys:
        label = {"compositional_acc": "hard negatives (all types)"}.get(
            key, key.replace("zeroshot_", "zero-shot ").replace("_acc1", ""))
        row = f"{label:28s}"
        for rep in regimes.values():
            c, s = rep["runs"]["CLIP"]["metrics"][key], rep["runs"]["SuperCLIP"]["metrics"][key]
            row += f" {100 * c:15.1f} {100 * s:9.1f} {100 * (s - c):+6.1f}"
        for lost in report["lost"].values():
            row += f"  {100 * lost['CLIP'][key]:18.1f} {100 * lost['SuperCLIP'][key]:9.1f}"
        print(row)
    print(f"\n{args.samples} samples seen per run at batch {' and '.join(map(str, args.batches))}, "
          f"{args.family}, seed {args.seed}, lr {args.lr:g}, {time.perf_counter() - t0:.0f} s; "
          f"report {out / 'report.json'}, picture {out / 'demo.png'}")
    print("One seed, one draw: docs/demo.md's 5-seed tables give every figure's spread over seeds "
          "(at the default lr a few points; at lr 2e-3 a single run's CLIP-SuperCLIP gap changed sign from seed to "
          "seed).")
    return 0


def _cmd_data_synth_sets(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .data.synth_sets import write_compositional, write_masks

    out = Path(args.out)
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
    from .data.synth_sets import shard_paths, write_shards

    splits = (("train", args.train_samples), ("val", args.val_samples), ("test", args.test_samples))
    for flag, value, low in (("--shard-size", args.shard_size, 1), ("--image-size", args.image_size, 1),
                             *((f"--{split}-samples", n, 0) for split, n in splits)):
        if value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}")
    try:  # before any shard is drawn: a folder that cannot be made is one line
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out: cannot create folder {args.out}: {e.strerror or e}") from None
    if args.compositional or args.masks:
        return _cmd_data_synth_sets(args)
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
    print(f"wrote {len(paths)} shards to {args.out}; train on them with: superclip train --train-data "
          f"'{args.out}/train-{{000000..{max(0, -(-args.train_samples // args.shard_size) - 1):06d}}}.tar' "
          f"--train-num-samples {args.train_samples}")
    return 0


def _at_least(low: int):
    """argparse type: an int >= ``low`` (a bad value is argparse's one-line usage error, exit 2)."""
    def parse(value: str) -> int:
        n = int(value)
        if n < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {n}")
        return n
    parse.__name__ = "int"  # argparse names the type in its error for a non-number
    return parse


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, with a usage mistake (unknown flag, bad value) on one line and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="superclip", description="SuperCLIP on open_clip towers")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("flops", help="multiply-adds of vision / text / head per image-text pair")
    p.add_argument("models", nargs="+", metavar="MODEL", help="model name or JSON path")
    p.add_argument("--json", action="store_true", help="also print one JSON line per model")
    p.set_defaults(func=_cmd_flops)

    p = sub.add_parser("export", help="write a model folder: open_clip / hub (safetensors + head), transformers, ONNX")
    p.add_argument("checkpoint", help="superclip, official SuperCLIP or open_clip checkpoint, a model folder, "
                                      "or hf-hub:ORG/REPO[/FILE]")
    p.add_argument("out_dir", help="folder to write")
    p.add_argument("--format", default="open_clip", choices=["open_clip", "transformers", "onnx"],
                   help="open_clip: open_clip_config.json + open_clip_model.safetensors + superclip_head.safetensors + "
                        "README.md (what open_clip's hf-hub: / local-dir: read); transformers: CLIPModel folder; "
                        "onnx: image and text encoders")
    p.add_argument("--model", default=None, help="model config (needed when the checkpoint carries none)")
    p.add_argument("--push-to-hub", default=None, metavar="ORG/REPO", help="upload the folder to this hub repository")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    p.add_argument("--cache-dir", default=None, help="hub cache for hf-hub: sources (default: huggingface_hub's)")
    p.add_argument("--overwrite", action="store_true", help="export into a folder that is not empty, replacing the "
                                                            "files of the same names (others are left alone)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("train", help="train (one CPU to torchrun multi-node)",
                       description="Train SuperCLIP. Distributed: torchrun --nproc_per_node N -m superclip train ...")
    _add_train_flags(p)
    p.set_defaults(func=_cmd_train)

    from .demo import DEMO_FAMILY, DEMO_LR

    p = sub.add_parser("demo", help="CLIP vs SuperCLIP on synthetic data, at a larger and a small batch")
    p.add_argument("--samples", type=_at_least(1), default=4800, help="samples seen by every run")
    p.add_argument("--batches", type=_at_least(2), nargs="+", default=[32, 8],
                   help="batch sizes, each >= 2 (the contrastive loss of one pair is 0; the first is the reference "
                        "of 'lost')")
    p.add_argument("--lr", type=float, default=DEMO_LR, help="peak learning rate (default %(default)g: where the "
                                                             "outcome does not hinge on the seed; see docs/demo.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-samples", type=_at_least(1), default=500, help="test images per task")
    p.add_argument("--out", default=None, help="run folder (default runs/demo-DATE-TIME)")
    p.add_argument("--family", default=DEMO_FAMILY, choices=["scenes", "textures"],
                   help="synthetic data family (default %(default)s)")
    p.set_defaults(func=_cmd_demo)

    from .cli_eval import add_parsers

    add_parsers(sub)

    from .cli_search import add_parsers as add_search_parsers  # index build|add|remove|optimize, serve

    add_search_parsers(sub)

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

    p = sub.add_parser("models", help="list the model configs shipped with superclip")
    p.set_defaults(func=_cmd_models)
    return parser


def one_line(error: Exception) -> str:
    """The message of ``error`` on one line; an error re-raised from a data-loader worker carries the worker's
    traceback in its text, and only its last line is the message."""
    text = str(error).strip()
    if "Traceback" in text:
        text = text.splitlines()[-1]
        prefix = f"{type(error).__module__}.{type(error).__name__}: "
        text = text[len(prefix):] if text.startswith(prefix) else text
    return " ".join(text.split())


class _CtrlC:
    """SIGINT raises KeyboardInterrupt as usual and is also remembered: a library that swallows the exception
    (some guard their optional imports with a bare ``except``) cannot turn a Ctrl-C into exit 0, and whatever the
    interrupt breaks on its way out (a module left half-imported recurses; a library re-raises its own error) is
    reported as the interrupt, not as that error's traceback."""

    def __init__(self):
        self.seen = False

    def __call__(self, signum, frame):
        self.seen = True
        raise KeyboardInterrupt

    def install(self):
        """Installs this handler (on the main thread, over Python's default one or an earlier ``_CtrlC``); returns
        a function that puts back what was there, so ``main()`` called in-process leaves no handler behind."""
        import signal
        import threading

        before = signal.getsignal(signal.SIGINT)
        if threading.current_thread() is not threading.main_thread() or \
                not (before is signal.default_int_handler or isinstance(before, _CtrlC)):
            return lambda: None
        signal.signal(signal.SIGINT, self)
        return lambda: signal.signal(signal.SIGINT, before)


def main(argv: Optional[List[str]] = None) -> int:
    ctrl_c = _CtrlC()
    restore = ctrl_c.install()
    try:
        return _main(argv, ctrl_c)
    finally:
        restore()


def _main(argv: Optional[List[str]], ctrl_c: "_CtrlC") -> int:
    try:  # building the parser imports torch and open_clip: seconds in which a Ctrl-C lands
        parser = build_parser()
        args = parser.parse_args(argv)
        if ctrl_c.seen:
            raise KeyboardInterrupt
    except BaseException as e:
        if not (ctrl_c.seen or isinstance(e, KeyboardInterrupt)):
            raise
        print("superclip: interrupted", file=sys.stderr)
        return 130
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        rc = args.func(args)
        if ctrl_c.seen:
            raise KeyboardInterrupt
        return rc
    except BaseException as e:
        if ctrl_c.seen or isinstance(e, KeyboardInterrupt):
            if args.debug and not isinstance(e, KeyboardInterrupt):
                raise
            print(f"superclip {args.command}: interrupted", file=sys.stderr)
            return 130
        if isinstance(e, SuperCLIPError) and not args.debug:
            print(f"superclip {args.command}: error: {one_line(e)}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
