"""Training throughput: ``superclip train`` vs ``python -m open_clip_train.main``, same model, data, batch, precision.

    python bench/trainer_throughput.py [--steps 40] [--batch-size 64] [--workers 1] [--rounds 2]

Both trainers read the same TSV of 64 px PNGs (drawn once from the synthetic scenes) and train the same
tiny ViT (SuperCLIP-Tiny's towers) in fp32 on the CPU, one after the other, ``--rounds`` times in turn.
``--compile`` adds a run with ``--torchcompile`` (its compile time, the first step, falls in the skipped
steps; metrics.jsonl records it as compile_seconds, and the script prints it). Each logs every step: our
metrics.jsonl has samples/s per step (step + data wait), open_clip_train's log has the step's ``Batch (t)``
(the same span). The figure is the median over all steps after the first 5 of
each run. open_clip_train needs pandas (pip install pandas).
"""
import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def make_csv(folder: Path, rows: int, name: str) -> Path:
    from superclip.data.synthetic import SyntheticCaptions

    data = SyntheticCaptions(rows, image_size=64, seed=0)
    img_dir = folder / "images"
    img_dir.mkdir(exist_ok=True)
    lines = ["filepath\ttitle"]
    for i in range(rows):
        path = img_dir / f"{i:06d}.png"
        if not path.exists():
            data[i][0].save(path)
        lines.append(f"{path}\t{data[i][1]}")
    out = folder / name  # tab-separated: captions contain commas
    out.write_text("\n".join(lines) + "\n")
    return out


def run(cmd) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def step_rates(label: str, logs: Path, batch_size: int, skip: int = 5) -> list:
    """Samples/s of every logged step after the first ``skip``."""
    if label == "open_clip_train":
        text = (logs / "run" / "out.log").read_text()
        times = [float(m) for m in re.findall(r"Batch \(t\): ([0-9.]+)", text)]
        return [batch_size / t for t in times[skip:]]
    rows = [json.loads(line) for line in (logs / "run" / "metrics.jsonl").read_text().splitlines()]
    return [r["samples_per_s"] for r in rows if "samples_per_s" in r][skip:]


OPEN_CLIP_DRIVER = """
import sys, open_clip, open_clip_train.main as m
open_clip.add_model_config(sys.argv[1])
m.main(sys.argv[2:])
"""


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also time superclip with --torchcompile")
    args = p.parse_args()
    from superclip.model import resolve_model_config, split_model_config

    tmp = Path(tempfile.mkdtemp(prefix="superclip-bench-"))
    cfg_dir = tmp / "configs"
    cfg_dir.mkdir()
    oc_cfg, _, _ = split_model_config(resolve_model_config("SuperCLIP-Tiny"))
    (cfg_dir / "bench-tiny.json").write_text(json.dumps(oc_cfg))
    b = args.batch_size
    tsv = make_csv(tmp, args.steps * b, "train.tsv")
    common = ["--train-data", str(tsv), "--dataset-type", "csv", "--csv-img-key", "filepath",
              "--csv-caption-key", "title", "--csv-separator", "\t", "--batch-size", str(b), "--epochs", "1",
              "--lr", "5e-4", "--warmup", "2", "--precision", "fp32", "--workers", str(args.workers), "--seed", "0",
              "--log-every-n-steps", "1", "--name", "run"]
    labels = ("open_clip_train", "superclip λ=1", "superclip λ=0")
    labels += ("superclip λ=1 compiled",) if args.compile else ()
    rates = {label: [] for label in labels}
    compile_s = []
    for r in range(args.rounds):
        for label in labels:
            logs = tmp / f"logs-{r}-{labels.index(label)}"
            if label == "open_clip_train":
                cmd = [sys.executable, "-c", OPEN_CLIP_DRIVER, str(cfg_dir), "--model", "bench-tiny",
                       "--logs", str(logs), "--save-frequency", "0", "--report-to", "", *common]
            else:
                weight = "0" if "λ=0" in label else "1"
                cmd = [sys.executable, "-m", "superclip", "train", "--model", "SuperCLIP-Tiny", "--logs", str(logs),
                       "--no-progress", "--cls-loss-weight", weight, *common]
                if "compiled" in label:
                    cmd.append("--torchcompile")
            run(cmd)
            rates[label] += step_rates(label, logs, b)
            if "compiled" in label:
                rows = [json.loads(x) for x in (logs / "run" / "metrics.jsonl").read_text().splitlines()]
                compile_s += [r["compile_seconds"] for r in rows if "compile_seconds" in r]
    med = {label: statistics.median(v) for label, v in rates.items()}
    for label in labels:
        print(f"{label:24s} {med[label]:7.1f} samples/s (median of {len(rates[label])} steps, "
              f"{args.rounds} runs of {args.steps} steps, batch {b}, {args.workers} worker(s))")
    for label in labels[1:]:
        print(f"ratio {label} / open_clip_train: {med[label] / med['open_clip_train']:.3f}x")
    if compile_s:
        print("first (compiling) step of the compiled runs: " + ", ".join(f"{s:.1f} s" for s in compile_s))


if __name__ == "__main__":
    main()
