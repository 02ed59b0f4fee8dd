"""Where the seed-to-seed spread of a study comes from, read off its runs' training logs (no training here).

    python bench/seed_spread.py runs/study-batch-textures [runs/study-batch ...]

For every run of every seed: the test accuracy of the family's coarse and fine-grained task, the contrastive
loss over the last 10 % of steps, the learned temperature (logit_scale) at the end and at its peak, the
largest gradient norm and the step at which the contrastive loss first falls below 90 % of its starting
value (when learning takes off). Then, per run name, the correlation over seeds of the coarse accuracy with
each of these, to see which goes with a bad seed.
"""
import json
import statistics
import sys
from pathlib import Path


def run_stats(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "contrastive_loss" in r]
    tail = rows[-max(1, len(rows) // 10):]
    start = statistics.mean(r["contrastive_loss"] for r in rows[:10])
    takeoff = next((r["step"] for r in rows if r["contrastive_loss"] < 0.9 * start), None)
    return {"final_contrastive": statistics.mean(r["contrastive_loss"] for r in tail),
            "logit_scale_end": rows[-1]["logit_scale"], "logit_scale_max": max(r["logit_scale"] for r in rows),
            "grad_norm_max": max(r["grad_norm"] for r in rows), "takeoff_step": takeoff, "steps": rows[-1]["step"]}


def corr(x, y):
    if len(x) < 3 or statistics.pstdev(x) == 0 or statistics.pstdev(y) == 0:
        return float("nan")
    mx, my = statistics.mean(x), statistics.mean(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / (len(x) * statistics.pstdev(x) * statistics.pstdev(y))


def main():
    for study in map(Path, sys.argv[1:]):
        by_run = {}
        for report_path in sorted(study.glob("*-seed*/report.json")):
            report = json.loads(report_path.read_text())
            family = report["settings"].get("family", "scenes")
            coarse, fine = {"scenes": ("colour", "shape"), "textures": ("ink", "pattern")}[family]
            group = report_path.parent.name.rsplit("-seed", 1)[0]
            for name, run in report["runs"].items():
                stats = run_stats(report_path.parent / name.lower())
                stats.update(seed=report["settings"]["seed"], coarse=100 * run["metrics"][f"zeroshot_{coarse}_acc1"],
                             fine=100 * run["metrics"][f"zeroshot_{fine}_acc1"])
                by_run.setdefault((group, name), []).append(stats)
        print(f"\n## {study}  ({family}: coarse = {coarse}, fine = {fine})\n")
        cols = ["seed", "coarse", "fine", "final_contrastive", "takeoff_step", "logit_scale_end", "logit_scale_max",
                "grad_norm_max"]
        print("| setting | run | " + " | ".join(cols) + " |")
        print("|---|---|" + "---|" * len(cols))
        for (group, name), rows in by_run.items():
            for r in rows:
                print(f"| {group} | {name} | " + " | ".join(
                    "—" if r[c] is None else f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols)
                    + " |")
        print("\nCorrelation over seeds of the coarse accuracy with:\n")
        keys = ["final_contrastive", "takeoff_step", "logit_scale_end", "logit_scale_max", "grad_norm_max"]
        print("| setting | run | " + " | ".join(keys) + " |")
        print("|---|---|" + "---|" * len(keys))
        for (group, name), rows in by_run.items():
            acc = [r["coarse"] for r in rows]
            print(f"| {group} | {name} | " + " | ".join(
                f"{corr(acc, [r[k] if r[k] is not None else r['steps'] for r in rows]):+.2f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
