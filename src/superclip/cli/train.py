"""``superclip train | demo``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError
from .args import at_least
from .args import seed as seed_type


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, open_clip_train's spelling; only flags given on the line override."""
    import dataclasses

    from ..config import REFUSED, TrainConfig, refusal

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
    from ..config import FIELD_NAMES, load_yaml, make_config
    from ..train.preflight import preflight

    overrides = {k: v for k, v in vars(args).items() if k in FIELD_NAMES}
    cfg = make_config(load_yaml(args.config) if args.config else {}, overrides)
    model_cfg = preflight(cfg)  # what the command line alone can get wrong, before seconds of imports

    from ..lean_import import import_open_clip_for

    import_open_clip_for(model_cfg)  # without transformers / timm when the model uses neither (~0.9 s)
    from tqdm import tqdm

    from .. import distributed
    from ..errors import TrainingInterrupted
    from ..train.run_folder import read_metrics
    from ..train.trainer import Trainer

    if (cfg.device or ("cpu" if not _cuda_available() else "cuda")).startswith("cpu"):
        from ..cpu import keep_freed_memory, share_cores_with_workers

        share_cores_with_workers(cfg.workers)
        keep_freed_memory()
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
            from ..plot import plot_losses  # matplotlib: imported once the training is done

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


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    if args.samples < max(args.batches):  # every run trains at least one whole batch: it would see more
        raise ConfigError(f"--samples {args.samples} is less than one batch of {max(args.batches)} (--batches "
                          f"{' '.join(map(str, args.batches))}): give --samples of at least {max(args.batches)}")
    from tqdm import tqdm

    from ..demo import run_regimes

    out = Path(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    total = sum(2 * max(1, args.samples // b) for b in args.batches)
    bar = tqdm(total=total, unit="step", dynamic_ncols=True)

    def on_step(name, step, m):
        bar.set_description(name)
        bar.update(1)
        bar.set_postfix(loss=f"{m['loss']:.3f}")

    from ..cpu import keep_freed_memory

    keep_freed_memory()  # the same numbers, fewer page faults a step
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


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="train (one CPU to torchrun multi-node)",
                       description="Train SuperCLIP. Distributed: torchrun --nproc_per_node N -m superclip train ...")
    _add_train_flags(p)
    p.set_defaults(func=_cmd_train)

    from ..config import DEMO_FAMILY, DEMO_LR

    p = sub.add_parser("demo", help="CLIP vs SuperCLIP on synthetic data, at a larger and a small batch")
    p.add_argument("--samples", type=at_least(1), default=4800, help="samples seen by every run")
    p.add_argument("--batches", type=at_least(2), nargs="+", default=[32, 8],
                   help="batch sizes, each >= 2 (the contrastive loss of one pair is 0; the first is the reference "
                        "of 'lost')")
    p.add_argument("--lr", type=float, default=DEMO_LR, help="peak learning rate (default %(default)g: where the "
                                                             "outcome does not hinge on the seed; see docs/demo.md)")
    p.add_argument("--seed", type=seed_type, default=0)
    p.add_argument("--eval-samples", type=at_least(1), default=500, help="test images per task")
    p.add_argument("--out", default=None, help="run folder (default runs/demo-DATE-TIME)")
    p.add_argument("--family", default=DEMO_FAMILY, choices=["scenes", "textures"],
                   help="synthetic data family (default %(default)s)")
    p.set_defaults(func=_cmd_demo)
