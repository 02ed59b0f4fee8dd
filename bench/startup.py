"""What a user waits for: the CLI's answers, time to the first training step and a whole short run, against
open_clip_train, each the median of several runs, one after the other in the same run of this script.

    python bench/startup.py [--rounds 5] [--checkout DIR]

- CLI: ``superclip --help``, ``train --help``, ``index build --help``, an unknown flag, a missing --train-data
  file, ``superclip models`` (wall time of the whole process), beside ``python -m open_clip_train.main --help``.
- Training: the tests' tiny model (ViT 32 px / 8 px patches, width 64, 2 layers; text width 64, 2 layers; the
  real 49,408-word vocabulary), a 2,000-pair TSV of 64 px PNGs, batch 32, 3 epochs (186 steps), lr 5e-4, fp32,
  one loader worker, a checkpoint every epoch (both trainers' default), logging every step. Time to first step is
  when the first step's log line appears (our metrics.jsonl, open_clip_train's out.log), polled every 5 ms from
  the launch; the whole run is the process's wall time. Rounds alternate open_clip_train, superclip λ=1, λ=0.
- Time to the result of ``eval`` (zero-shot on 16 images), ``embed`` (8 images) and ``index build`` (16 images)
  with SuperCLIP-Tiny weights saved once (whole process), beside open_clip's own way of embedding the same 8 images
  with the same towers and weights (``python -c "import open_clip; create_model_and_transforms; load_checkpoint;
  encode_image"``, OPEN_CLIP_EMBED), and the one-line errors of a missing image and a missing checkpoint.

``--checkout DIR`` times another checkout's superclip (its ``src`` first on PYTHONPATH) instead of this one;
``--before DIR`` times another checkout's superclip as well, in the same rounds, to quote a before / after measured
side by side. open_clip_train needs pandas (pip install pandas).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainer_throughput import make_csv  # noqa: E402  (the TSV of synthetic 64 px scenes)

TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
OPEN_CLIP_EMBED = """
import sys, numpy as np, torch, open_clip
from PIL import Image
open_clip.add_model_config(sys.argv[1])
model, _, preprocess = open_clip.create_model_and_transforms("bench-tiny-clip")
open_clip.load_checkpoint(model, sys.argv[2])
model.eval()
with torch.no_grad():
    feats = model.encode_image(torch.stack([preprocess(Image.open(p).convert("RGB")) for p in sys.argv[4:]]),
                               normalize=True)
np.save(sys.argv[3], feats.numpy())
"""
OPEN_CLIP_DRIVER = """
import sys, open_clip, open_clip_train.main as m
open_clip.add_model_config(sys.argv[1])
m.main(sys.argv[2:])
"""


def timed(cmd, env, marker: Path = None, needle: str = None, check: bool = True):
    """(seconds to ``needle`` in ``marker``, or None; seconds to exit) of one process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = None
    while proc.poll() is None:
        if marker is not None and first is None and marker.exists() and needle in marker.read_text(errors="replace"):
            first = time.perf_counter() - t0
        time.sleep(0.005)
    total = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}): {err[-2000:]}")
    if marker is not None and first is None and marker.exists() and needle in marker.read_text(errors="replace"):
        first = total
    return first, total


def median_row(label: str, values) -> str:
    return f"{label:44s} {statistics.median(values):7.2f} s  (runs: {', '.join(f'{v:.2f}' for v in values)})"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--checkout", default=None, help="time this checkout's superclip (DIR/src) instead")
    p.add_argument("--before", default=None, help="also time this checkout's superclip (DIR/src), same rounds")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-commands", action="store_true")
    args = p.parse_args()
    env = dict(os.environ)
    if args.checkout:
        env["PYTHONPATH"] = str(Path(args.checkout).resolve() / "src") + os.pathsep + env.get("PYTHONPATH", "")
    us = [sys.executable, "-m", "superclip"]
    tmp = Path(tempfile.mkdtemp(prefix="superclip-startup-"))
    before_env = None
    if args.before:
        before_env = dict(os.environ, PYTHONPATH=str(Path(args.before).resolve() / "src") + os.pathsep +
                          os.environ.get("PYTHONPATH", ""))

    cli = {"superclip --help": [*us, "--help"], "superclip train --help": [*us, "train", "--help"],
           "superclip index build --help": [*us, "index", "build", "--help"],
           "unknown flag (train --no-such-flag)": [*us, "train", "--no-such-flag"],
           "missing file (train --train-data /no/such.csv)": [*us, "train", "--train-data", "/no/such.csv"],
           "superclip models": [*us, "models"],
           "open_clip_train --help": [sys.executable, "-m", "open_clip_train.main", "--help"]}
    times = {label: [] for label in cli}
    for _ in range(args.rounds):
        for label, cmd in cli.items():
            times[label].append(timed(cmd, env, check=False)[1])
    print("== the command line (wall time of the process)")
    for label in cli:
        print(median_row(label, times[label]))

    if not args.skip_train:
        cfg_dir = tmp / "configs"
        cfg_dir.mkdir()
        (cfg_dir / "bench-tiny.json").write_text(json.dumps(TINY))
        tsv = make_csv(tmp, 2000, "train.tsv")
        common = ["--train-data", str(tsv), "--dataset-type", "csv", "--csv-img-key", "filepath",
                  "--csv-caption-key", "title", "--csv-separator", "\t", "--batch-size", "32", "--epochs", "3",
                  "--lr", "5e-4", "--warmup", "2", "--precision", "fp32", "--workers", "1", "--seed", "0",
                  "--log-every-n-steps", "1", "--name", "run"]
        runs = {"open_clip_train": [], "superclip λ=1": [], "superclip λ=0": []}
        for r in range(args.rounds):
            for i, label in enumerate(runs):
                logs = tmp / f"logs-{r}-{i}"
                if label == "open_clip_train":
                    cmd = [sys.executable, "-c", OPEN_CLIP_DRIVER, str(cfg_dir), "--model", "bench-tiny", "--logs",
                           str(logs), "--report-to", "", *common]
                    marker, needle = logs / "run" / "out.log", "Train Epoch: 0 ["
                else:
                    cmd = [*us, "train", "--model", str(cfg_dir / "bench-tiny.json"), "--logs", str(logs),
                           "--no-progress", "--cls-loss-weight", "0" if "λ=0" in label else "1", *common]
                    marker, needle = logs / "run" / "metrics.jsonl", '"step": 1,'
                runs[label].append(timed(cmd, env, marker, needle))
                subprocess.run(["rm", "-rf", str(logs)], check=True)  # 3 checkpoints of 79 MB a run
        print("\n== superclip train vs open_clip_train (tiny model, 2,000 pairs, batch 32, 3 epochs = 186 steps)")
        for what, k in (("first step", 0), ("whole run", 1)):
            base = statistics.median([x[k] for x in runs["open_clip_train"]])
            for label, xs in runs.items():
                values = [x[k] for x in xs]
                ratio = "" if label == "open_clip_train" else \
                    f"   {statistics.median(values) / base:.2f}x its time ({base / statistics.median(values):.2f}x " \
                    "as fast)"
                print(median_row(f"{what}: {label}", values) + ratio)

    if not args.skip_commands:
        commands(args, us, env, before_env, tmp)
    subprocess.run(["rm", "-rf", str(tmp)], check=True)


def commands(args, us, env, before_env, tmp: Path):
    """eval / embed / index build on a small input, beside open_clip embedding the same images (and the same
    commands of ``--before``'s checkout)."""
    import numpy as np
    import torch
    from PIL import Image

    import superclip
    from superclip.model import openclip_config  # the towers' config as open_clip reads it (what export writes)

    ckpt = tmp / "tiny.pt"
    model = superclip.create_model("SuperCLIP-Tiny")
    superclip.save_checkpoint(ckpt, model)
    torch.save(model.clip.state_dict(), tmp / "tiny-clip.pt")  # the CLIP towers, as open_clip saves them
    (tmp / "oc-configs").mkdir()
    (tmp / "oc-configs" / "bench-tiny-clip.json").write_text(json.dumps(openclip_config(model.config)))
    images = tmp / "images"
    for c, colour in enumerate(("red", "blue")):
        (images / colour).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (64, 64), (200 * (c == 0), 20 * i, 200 * (c == 1))).save(images / colour / f"{i}.png")
    files = sorted(str(x) for x in images.rglob("*.png"))
    ours = {"eval --zeroshot-data (16 images)": [*us, "eval", "--pretrained", str(ckpt), "--zeroshot-data",
                                                 str(images), "--device", "cpu", "--no-progress"],
            "embed (8 images)": [*us, "embed", "--pretrained", str(ckpt), *files[:8], "--out",
                                 str(tmp / "emb"), "--overwrite", "--device", "cpu", "--no-progress"],
            "index build (16 images)": [*us, "index", "build", str(images), "--pretrained", str(ckpt), "--out",
                                        None, "--device", "cpu", "--no-progress"],
            "embed, a missing image": [*us, "embed", "--pretrained", str(ckpt), str(tmp / "no.png"), "--out",
                                       str(tmp / "emb-no"), "--device", "cpu"],
            "eval, a missing checkpoint": [*us, "eval", "--pretrained", str(tmp / "no.pt"), "--zeroshot-data",
                                           str(images)]}
    runs = [(label, cmd, env) for label, cmd in ours.items()]
    if before_env is not None:
        runs += [(f"{label} [before]", cmd, before_env) for label, cmd in ours.items()]
    runs.append(("open_clip: embed (8 images, same towers)", [
        sys.executable, "-c", OPEN_CLIP_EMBED, str(tmp / "oc-configs"), str(tmp / "tiny-clip.pt"),
        str(tmp / "oc-emb.npy"), *files[:8]], env))
    times = {label: [] for label, _, _ in runs}
    for r in range(args.rounds):
        for k, (label, cmd, cmd_env) in enumerate(runs):
            cmd = [str(tmp / f"idx-{r}-{k}") if c is None else c for c in cmd]
            times[label].append(timed(cmd, cmd_env, check="missing" not in label)[1])
    same = np.abs(np.load(tmp / "emb.npy") - np.load(tmp / "oc-emb.npy")).max()
    print(f"\n== time to the result on a small input (SuperCLIP-Tiny, wall time of the process; embed's rows and "
          f"open_clip's differ by at most {same:.1e})")
    base = statistics.median(times["open_clip: embed (8 images, same towers)"])
    for label, _, _ in runs:
        median = statistics.median(times[label])
        print(median_row(label, times[label]) + f"   {median / base:.2f}x open_clip's embed")


if __name__ == "__main__":
    main()
