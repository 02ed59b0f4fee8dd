"""Training throughput: ``superclip train`` vs ``python -m open_clip_train.main``, same model, data, batch, precision.

    python bench/trainer_throughput.py [--steps 20] [--batch-size 64] [--workers 1]

Both trainers read the same CSV of 64 px PNGs (drawn once from the synthetic scenes) and train the same
tiny ViT (SuperCLIP-Tiny's towers) in fp32 on the CPU, one after the other. Each is run twice, on N and on
2N steps' worth of rows, and samples/s after warm-up is N x batch / (t(2N) - t(N)): start-up, model building
and the first steps cancel out. open_clip_train needs pandas (pip install pandas).
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
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


def run(cmd, env=None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t0


OPEN_CLIP_DRIVER = """
import sys, open_clip, open_clip_train.main as m
open_clip.add_model_config(sys.argv[1])
m.main(sys.argv[2:])
"""


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    from superclip.model import resolve_model_config, split_model_config

    tmp = Path(tempfile.mkdtemp(prefix="superclip-bench-"))
    cfg_dir = tmp / "configs"
    cfg_dir.mkdir()
    oc_cfg, _, _ = split_model_config(resolve_model_config("SuperCLIP-Tiny"))
    (cfg_dir / "bench-tiny.json").write_text(json.dumps(oc_cfg))
    n, b = args.steps, args.batch_size
    csvs = {k: make_csv(tmp, k * n * b, f"train_{k}.tsv") for k in (1, 2)}
    common = ["--csv-img-key", "filepath", "--csv-caption-key", "title", "--csv-separator", "\t",
              "--batch-size", str(b), "--epochs", "1", "--lr", "5e-4", "--warmup", "2", "--precision", "fp32",
              "--workers", str(args.workers), "--seed", "0"]
    results = {}
    for label, extra in (("superclip λ=1", ["--cls-loss-weight", "1"]), ("superclip λ=0", ["--cls-loss-weight", "0"]),
                         ("open_clip_train", None)):
        times = {}
        for k, csv in csvs.items():
            logs = tmp / f"logs-{label.replace(' ', '_')}-{k}"
            if extra is None:
                cmd = [sys.executable, "-c", OPEN_CLIP_DRIVER, str(cfg_dir), "--train-data", str(csv),
                       "--dataset-type", "csv", "--model", "bench-tiny", "--logs", str(logs), "--name", "run",
                       "--save-frequency", "0", "--report-to", "", "--log-every-n-steps", "1000", *common]
            else:
                cmd = [sys.executable, "-m", "superclip", "train", "--train-data", str(csv), "--dataset-type", "csv",
                       "--model", "SuperCLIP-Tiny", "--logs", str(logs), "--name", "run", "--no-progress",
                       "--log-every-n-steps", "1000", *extra, *common]
            times[k] = run(cmd)
        results[label] = n * b / (times[2] - times[1])
        print(f"{label:16s} t({n} steps) {times[1]:6.1f} s  t({2 * n} steps) {times[2]:6.1f} s  "
              f"-> {results[label]:7.1f} samples/s after warm-up", flush=True)
    base = results["open_clip_train"]
    for label in ("superclip λ=1", "superclip λ=0"):
        print(f"ratio {label} / open_clip_train: {results[label] / base:.3f}x")


if __name__ == "__main__":
    main()
