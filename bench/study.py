"""Toy-scale studies of the paper's claims on the synthetic scenes, each over several seeds.

    python bench/study.py seeds     [--seeds 0 1 2]   # CLIP vs SuperCLIP at the demo's settings
    python bench/study.py batch     [--seeds 0 1 2]   # batch 8 / 32 / 128 with equal samples seen (Fig. 4)
    python bench/study.py lambda    [--seeds 0 1 2]   # λ in 0, 0.5, 1, 2 and IDF off (Tables 9, 10)
    python bench/study.py captions  [--seeds 0 1 2]   # detailed captions only: CLIP vs SuperCLIP (Table 5)
    python bench/study.py batch --batches 8 --family textures --seeds 0 1 2 3 4   # on the second family
    python bench/study.py batch --batches 8 --vary init   # the seeds vary the initial weights only (data: seed 0)
    python bench/study.py batch --batches 8 --vary data   # ... the data only (samples, order, captions, test set)

Each writes runs/study-NAME/{report.json, table.md, study.png} and prints the table: mean ± std over seeds
of every test metric, then per seed: each run's fine-grained, coarse and retrieval figures, the paired gap
against the group's first run and in how many seeds it is ahead. Common options: --family (scenes, textures),
--batch-size, --samples (samples seen per run; the batch study keeps it fixed), --lr, --warmup-share (of the
steps, default 0.1), --vary (what a seed changes: both, init, data), --model (a config name or JSON path),
--vision-layers N (the model with its image tower N layers deep: a config derived from --model), --out.
"""
import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from superclip.data.families import FAMILIES  # noqa: E402
from superclip.demo import run_demo  # noqa: E402
from superclip.model import resolve_model_config  # noqa: E402

STUDIES = {
    "seeds": lambda a: [("demo", a.batch_size, None, (("CLIP", {"cls_loss_weight": 0.0}),
                                                      ("SuperCLIP", {"cls_loss_weight": 1.0})))],
    "batch": lambda a: [(f"batch {b}", b, None, (("CLIP", {"cls_loss_weight": 0.0}),
                                                 ("SuperCLIP", {"cls_loss_weight": 1.0}))) for b in a.batches],
    "lambda": lambda a: [("λ sweep", a.batch_size, None, tuple(
        [(f"λ={w:g}", {"cls_loss_weight": w}) for w in (0.0, 0.5, 1.0, 2.0)]
        + [("λ=1 IDF off", {"cls_loss_weight": 1.0, "idf": "off"})]))],
    "captions": lambda a: [("detailed captions only", a.batch_size, 1.0, (("CLIP", {"cls_loss_weight": 0.0}),
                                                                         ("SuperCLIP", {"cls_loss_weight": 1.0})))],
}


def derived_model(model: str, vision_layers: int, out: Path) -> str:
    """A JSON path of ``model``'s config with an image tower ``vision_layers`` deep, written into ``out``."""
    cfg = resolve_model_config(model)
    cfg["vision_cfg"]["layers"] = vision_layers
    path = out / f"{Path(model).stem}-vision{vision_layers}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg, indent=4) + "\n")
    return str(path)


def finished(run_dir: Path, settings: dict, runs) -> Optional[dict]:
    """The report of an earlier run with identical settings and runs (an interrupted study resumes), else None."""
    path = run_dir / "report.json"
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    same_runs = {n: r["config"] for n, r in report["runs"].items()} == {n: dict(c) for n, c in runs}
    return report if report["settings"] == settings and same_runs else None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("study", choices=sorted(STUDIES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, nargs="+", default=[8, 32, 128], help="batch sizes of the batch study")
    p.add_argument("--samples", type=int, default=9600, help="samples seen per run")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-samples", type=int, default=500)
    p.add_argument("--family", default="scenes", choices=sorted(FAMILIES))
    p.add_argument("--warmup-share", type=float, default=0.1, help="warm-up steps as a share of the run's steps")
    p.add_argument("--vary", default="both", choices=("both", "init", "data"),
                   help="what a seed changes: initial weights and data (both), the initial weights only (data seed "
                        "0), the data only (weights seed 0)")
    p.add_argument("--model", default="SuperCLIP-Tiny", help="model config name or JSON path")
    p.add_argument("--vision-layers", type=int, default=None,
                   help="image tower depth: --model's config with vision_cfg.layers set to this (the tower size)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    family = FAMILIES[args.family]
    suffix = "" if args.family == "scenes" else f"-{args.family}"
    out = Path(args.out or f"runs/study-{args.study}{suffix}")
    label = "" if args.model == "SuperCLIP-Tiny" else f", model {args.model}"
    if args.vision_layers is not None:
        label += f", image tower {args.vision_layers} layers deep"
        args.model = derived_model(args.model, args.vision_layers, out)
    rows = {}  # (group, run) -> metric -> [values over seeds]
    for group, batch, long_ratio, runs in STUDIES[args.study](args):
        for seed in args.seeds:
            steps = args.samples // batch
            run_dir = out / f"{group.replace(' ', '_')}-seed{seed}"
            settings = {"model": args.model, "steps": steps, "batch_size": batch,
                        "seed": 0 if args.vary == "data" else seed, "lr": args.lr, "eval_samples": args.eval_samples,
                        "long_caption_ratio": 0.5 if long_ratio is None else long_ratio,
                        **({"family": args.family} if args.family != "scenes" else {}),
                        **({"data_seed": {"init": 0, "data": seed}[args.vary]} if args.vary != "both" else {}),
                        **({"warmup": max(1, round(args.warmup_share * steps))} if args.warmup_share != 0.1 else {})}
            report = finished(run_dir, settings, runs)
            if report is None:
                report = run_demo(run_dir, runs=runs, **settings)
            else:
                print(f"reusing {run_dir / 'report.json'} (same settings)", file=sys.stderr, flush=True)
            for name, run in report["runs"].items():
                for metric, value in run["metrics"].items():
                    rows.setdefault((group, name), {}).setdefault(metric, []).append(100 * value)
            print(f"done: {group}, seed {seed}", file=sys.stderr, flush=True)
    metrics = list(next(iter(rows.values())))
    fmt = lambda v: f"{statistics.mean(v):.1f} ± {statistics.stdev(v) if len(v) > 1 else 0:.1f}"  # noqa: E731
    paired = (f"zeroshot_{family.coarse}_acc1", f"zeroshot_{family.fine}_acc1", "image_retrieval_recall@1",
              "text_retrieval_recall@1", f"zeroshot_{family.tasks[2]}_acc1")
    varied = {"both": "", "init": " (initial weights only; data seed 0)", "data": " (data only; weights seed 0)"}
    lines = [f"Study `{args.study}` on the {args.family}{label}: {args.samples} samples seen per run, lr {args.lr:g}, "
             f"warm-up {args.warmup_share:.0%} of the steps, seeds {args.seeds}{varied[args.vary]}; "
             "test split, %, mean ± std over seeds", "",
             "| setting | run | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for (group, name), vals in rows.items():
        lines.append(f"| {group} | {name} | " + " | ".join(fmt(vals[m]) for m in metrics) + " |")
    lines += ["", "Paired gap against the group's first run (same seed, same data), mean ± std over seeds, points:", "",
              "| setting | run | " + " | ".join(paired) + " |", "|---|---|" + "---|" * len(paired)]
    for (group, name), vals in rows.items():
        base = next(v for (g, _), v in rows.items() if g == group)
        if vals is not base:
            lines.append(f"| {group} | {name} | " + " | ".join(
                fmt([a - b for a, b in zip(vals[m], base[m])]) for m in paired) + " |")
    lines += ["", "Per seed (run vs the group's first run, and the gap), points:", "",
              "| setting | run | metric | " + " | ".join(f"seed {s}" for s in args.seeds) + " | ahead in |",
              "|---|---|---|" + "---|" * len(args.seeds) + "---|"]
    for (group, name), vals in rows.items():
        base = next(v for (g, _), v in rows.items() if g == group)
        if vals is base:
            continue
        for m in paired:
            gaps = [a - b for a, b in zip(vals[m], base[m])]
            lines.append(f"| {group} | {name} | {m} | " + " | ".join(
                f"{a:.1f} vs {b:.1f} ({g:+.1f})" for a, b, g in zip(vals[m], base[m], gaps)) +
                f" | {sum(g > 0 for g in gaps)} of {len(gaps)} |")
    groups = list(dict.fromkeys(g for g, _ in rows))
    if args.study == "batch" and len(groups) > 1:  # the paper's Fig. 4 quantity
        names = [n for g, n in rows if g == groups[0]]
        lines += ["", f"Lost going from {groups[0]} to each smaller batch (same samples seen), points, mean ± std over "
                  "seeds (per seed in brackets):", "",
                  "| to | run | " + " | ".join(paired) + " |", "|---|---|" + "---|" * len(paired)]
        for group in groups[1:]:
            for name in names:
                big, small = rows[(groups[0], name)], rows[(group, name)]
                cells = []
                for m in paired:
                    lost = [a - b for a, b in zip(big[m], small[m])]
                    cells.append(fmt(lost) + " (" + " / ".join(f"{x:.1f}" for x in lost) + ")")
                lines.append(f"| {group} | {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    (out / "report.json").write_text(json.dumps({f"{g} / {n}": v for (g, n), v in rows.items()}, indent=2) + "\n")
    plot(rows, paired[:3], out / "study.png", f"study '{args.study}': mean ± std over seeds {args.seeds} (dots: seeds)")


def plot(rows: dict, metrics, path: Path, title: str) -> None:
    """One panel per metric: a bar (mean ± std) per run, each seed a dot, a seed's runs joined within a group."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(9, len(metrics) * len(rows) * 0.75), 4.2), dpi=100)
    keys, values = list(rows), list(rows.values())
    labels = [f"{g}\n{n}" for g, n in keys]
    for ax, metric in zip(axes, metrics):
        for i, ((group, _), vals) in enumerate(rows.items()):
            v = vals[metric]
            ax.bar(i, statistics.mean(v), yerr=statistics.stdev(v) if len(v) > 1 else 0, capsize=3,
                   color="C0" if i == 0 or keys[i - 1][0] != group else "C1", alpha=0.8)  # C0: group's baseline
            ax.plot([i] * len(v), v, "k.", ms=4)
        for group in dict.fromkeys(g for g, _ in keys):  # join each seed's runs within a group
            idx = [i for i, (g, _) in enumerate(keys) if g == group]
            for seed in range(len(values[idx[0]][metric])):
                ax.plot(idx, [values[i][metric][seed] for i in idx], "k-", lw=0.5, alpha=0.4)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, fontsize=7, rotation=30 if len(rows) > 4 else 0)
        ax.set_title(metric.replace("zeroshot_", "zero-shot ").replace("_acc1", " acc1"), fontsize=9)
        ax.set_ylabel("%")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
