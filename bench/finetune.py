"""Fine-tuning a CLIP checkpoint on your own captioned images with the small batch one GPU allows, with and
without SuperCLIP's class term (docs/training.md, "Fine-tuning a pretrained CLIP").

    python bench/finetune.py [--seeds 0 1 2] [--pretrain-steps 150] [--steps 300] [--batch-size 8]

1. Pretrain plain CLIP (λ = 0) briefly on the synthetic scenes (batch 64) and export it as an open_clip folder
   without our head file: what an open_clip hub model looks like to superclip (the head starts fresh).
2. Write "your own CSV": scenes from another generator seed, as PNG files + train.csv (filepath, title).
3. Fine-tune from the folder, as `superclip train --pretrained FOLDER --train-data train.csv --batch-size 8
   --cls-loss-weight {0,1}` would, for each seed (seed = data order, head init, augmentation).
4. Evaluate each on the scenes' test split (zero-shot colour / shape / colour+shape, retrieval, tagger).

Writes runs/finetune/{report.json, table.md} and prints the table.
"""
import argparse
import csv
import json
import statistics
from pathlib import Path

from superclip.config import TrainConfig
from superclip.data.synthetic import SyntheticCaptions
from superclip.demo import evaluate_synthetic
from superclip.export import export_folder
from superclip.train.trainer import Trainer


def write_csv(folder: Path, n: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.csv"
    if path.exists():
        return path
    data = SyntheticCaptions(n, image_size=64, seed=seed, split="train", detailed_prob=0.5)
    with open(folder / "train.csv.tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "title"])
        for i in range(n):
            image, caption = data[i]
            image.save(folder / f"{i:06d}.png")
            w.writerow([f"{i:06d}.png", caption])  # relative paths are read from the CSV's folder
    (folder / "train.csv.tmp").rename(path)
    return path


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--pretrain-steps", type=int, default=150)
    p.add_argument("--steps", type=int, default=300, help="fine-tuning steps (one epoch of the CSV)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--eval-samples", type=int, default=500)
    p.add_argument("--out", default="runs/finetune")
    a = p.parse_args()
    out = Path(a.out)
    common = dict(model="SuperCLIP-Tiny", epochs=1, logs=str(out), log_every_n_steps=10, progress=False,
                  resume="latest")
    pre = Trainer(TrainConfig(dataset_type="synthetic", train_num_samples=a.pretrain_steps * 64, batch_size=64,
                              lr=2e-3, warmup=a.pretrain_steps // 10, seed=1000, cls_loss_weight=0.0,
                              long_caption_ratio=0.5, name="pretrain", **common))
    pre.fit()
    folder = out / "pretrained-open_clip"
    export_folder(pre.model, folder)
    (folder / "superclip_head.safetensors").unlink()  # an open_clip model: no head
    data = write_csv(out / "my-data", a.steps * a.batch_size, seed=2000)
    report = {"settings": vars(a), "pretrained": evaluate_synthetic(pre.model, a.eval_samples, 0), "runs": {}}
    for seed in a.seeds:
        for lam in (0.0, 1.0):
            name = f"ft-lambda{lam:g}-seed{seed}"
            t = Trainer(TrainConfig(pretrained=str(folder), train_data=str(data), dataset_type="csv",
                                    batch_size=a.batch_size, lr=a.lr, warmup=a.steps // 10, seed=seed,
                                    cls_loss_weight=lam, name=name, **common))
            t.fit()
            report["runs"][name] = evaluate_synthetic(t.model, a.eval_samples, 0)
            print(name, json.dumps({k: round(100 * v, 1) for k, v in report["runs"][name].items()}), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = ["| metric (test, %) | pretrained CLIP | fine-tuned λ=0 | fine-tuned λ=1 | λ=1 − λ=0 (paired) | "
            "seeds λ=1 ahead |", "|---|---|---|---|---|---|"]
    for key in report["pretrained"]:
        zero = [100 * report["runs"][f"ft-lambda0-seed{s}"][key] for s in a.seeds]
        one = [100 * report["runs"][f"ft-lambda1-seed{s}"][key] for s in a.seeds]
        diff = [y - x for x, y in zip(zero, one)]

        def ms(v):
            return f"{statistics.mean(v):.1f} ± {statistics.stdev(v):.1f}" if len(v) > 1 else f"{v[0]:.1f}"

        rows.append(f"| {key} | {100 * report['pretrained'][key]:.1f} | {ms(zero)} | {ms(one)} | {ms(diff)} | "
                    f"{sum(d > 0 for d in diff)} of {len(diff)} |")
    table = "\n".join(rows)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
