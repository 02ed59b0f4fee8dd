"""CLIP vs SuperCLIP on the fine-grained evaluations: compositional hard negatives (accuracy per type) and the dense
linear probe (mIoU), over the checkpoints of a `bench/study.py batch` run, per seed and paired.

    python bench/study.py batch --batches 8 --samples 4800 --lr 5e-4 --family textures --seeds 0 1 2 3 4 \
        --out runs/fine-textures                   # trains (the demo's settings at batch 8)
    python bench/fine_grained.py --family textures --batches 8 --seeds 0 1 2 3 4   # evaluates, writes the table

Each run is evaluated on one set per family (the same for every run, so the gaps are paired): hard negatives of
--items test images (`superclip data synth --compositional`) and a probe fitted on --mask-train and scored on
--mask-test images with masks (`--masks`), written once under runs/fine-sets/FAMILY. A run's figures are kept in
its folder (fine.json) and reused. Prints the table and writes it to --out (default
docs/studies/fine-grained-FAMILY.md).
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from superclip.demo import evaluate_fine_grained, fine_grained_sets
from superclip.weights import load_model

RUNS = ("CLIP", "SuperCLIP")


def eval_sets(family: str, items: int, mask_train: int, mask_test: int, seed: int) -> Path:
    return fine_grained_sets(Path("runs/fine-sets") / f"{family}-seed{seed}-{items}-{mask_train}-{mask_test}",
                             family, seed, items, mask_train, mask_test)


def evaluate(checkpoint: Path, sets: Path) -> dict:
    model, _, _ = load_model(None, pretrained=str(checkpoint), device="cpu")
    return evaluate_fine_grained(model, sets)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--family", default="textures", choices=["scenes", "textures"])
    p.add_argument("--batches", type=int, nargs="+", default=[8])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--runs-dir", default=None, help="the study's --out (default runs/fine-FAMILY)")
    p.add_argument("--items", type=int, default=500, help="test images with hard negatives")
    p.add_argument("--mask-train", type=int, default=200)
    p.add_argument("--mask-test", type=int, default=100)
    p.add_argument("--set-seed", type=int, default=1000, help="seed of the evaluation sets (not a training seed)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    runs_dir = Path(args.runs_dir or f"runs/fine-{args.family}")
    sets = eval_sets(args.family, args.items, args.mask_train, args.mask_test, args.set_seed)
    rows = {}  # (batch, run) -> metric -> {seed: value}
    for batch in args.batches:
        for seed in args.seeds:
            folder = runs_dir / f"batch_{batch}-seed{seed}"
            if not (folder / "report.json").exists():
                print(f"not trained (yet): {folder}", file=sys.stderr)
                continue
            cache = folder / "fine.json"
            key = str(sets)
            found = json.loads(cache.read_text()) if cache.exists() else {}
            if found.get("sets") != key:
                found = {"sets": key, "runs": {name: evaluate(folder / name.lower() / "checkpoints" / "epoch_latest.pt",
                                                              sets) for name in RUNS}}
                cache.write_text(json.dumps(found, indent=2) + "\n")
            for name, metrics in found["runs"].items():
                for m, v in metrics.items():
                    rows.setdefault((batch, name), {}).setdefault(m, {})[seed] = 100 * v
            print(f"done: batch {batch}, seed {seed}", file=sys.stderr, flush=True)
    if not rows:
        sys.exit("no trained runs found")
    metrics = list(next(iter(rows.values())))
    fmt = lambda v: f"{statistics.mean(v):.1f} ± {statistics.stdev(v) if len(v) > 1 else 0:.1f}"  # noqa: E731
    lines = [f"Fine-grained evaluations on the {args.family}: runs of `bench/study.py batch` (4800 samples seen, "
             f"lr 5e-4), evaluated on {args.items} hard-negative test images and a dense probe fitted on "
             f"{args.mask_train} / scored on {args.mask_test} masked images (set seed {args.set_seed}); %, mean ± std "
             "over seeds", "", "| batch | run | seeds | " + " | ".join(metrics) + " |",
             "|---|---|---|" + "---|" * len(metrics)]
    for (batch, name), vals in rows.items():
        lines.append(f"| {batch} | {name} | {len(vals[metrics[0]])} | " +
                     " | ".join(fmt(list(vals[m].values())) for m in metrics) + " |")
    lines += ["", "Per seed, SuperCLIP vs CLIP (same seed, same data) and the gap in points; the last column: in how "
              "many seeds SuperCLIP is ahead (ties count as not ahead):", ""]
    for batch in args.batches:
        if (batch, "CLIP") not in rows or (batch, "SuperCLIP") not in rows:
            continue
        clip, sup = rows[(batch, "CLIP")], rows[(batch, "SuperCLIP")]
        seeds = [s for s in args.seeds if s in clip[metrics[0]] and s in sup[metrics[0]]]
        lines += [f"batch {batch}:", "", "| metric | " + " | ".join(f"seed {s}" for s in seeds) +
                  " | paired gap | ahead in |", "|---|" + "---|" * (len(seeds) + 2)]
        for m in metrics:
            gaps = [sup[m][s] - clip[m][s] for s in seeds]
            lines.append(f"| {m} | " + " | ".join(f"{sup[m][s]:.1f} vs {clip[m][s]:.1f} ({g:+.1f})"
                                                  for s, g in zip(seeds, gaps)) +
                         f" | {fmt(gaps)} | {sum(g > 0 for g in gaps)} of {len(gaps)} |")
        lines.append("")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out or f"docs/studies/fine-grained-{args.family}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")


if __name__ == "__main__":
    main()
