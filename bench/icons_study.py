"""The paper's table in miniature on real drawings: CLIP (λ = 0) against SuperCLIP (λ = 1) trained on the icon corpus
of `superclip data icons` (same seeds, data order and initial weights, so every gap is paired), at a large and a
small batch with the same samples seen, scored on sets the models never saw (whole held-out icon sets): zero-shot
over shared concepts, retrieval (image <-> name), hard negatives per type (SugarCrepe's rule), the dense linear probe
on frozen patch tokens, and the head as a tagger.

    superclip data icons --out runs/icons-corpus                       # once: npm pack + render (~10 min here)
    python bench/icons_study.py --runs CLIP --batches 8 --lrs 2e-3 1e-3 5e-4 --seeds 0 1   # CLIP's stable lr
    python bench/icons_study.py --batches 64 8 --lrs 1e-3 --seeds 0 1 2                    # the table

Each run trains `--samples` samples (`--model`, default SuperCLIP-Tiny at 64 px) under runs/icons-study/ (one
folder per batch, lr and seed; a finished run's figures, eval.json, are reused when its settings match, so an
interrupted study resumes), keeps only its last checkpoint, prints the tables and writes them to --table. Run it
with one torch thread (OMP_NUM_THREADS=1) under `nice`, as the other studies.
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

RUNS = {"CLIP": 0.0, "SuperCLIP": 1.0}
HEADLINE = ("zeroshot_acc1", "image_retrieval_recall@1", "text_retrieval_recall@1", "hardneg_all", "dense_miou")


def shards_of(corpus: Path) -> tuple:
    manifest = json.loads((corpus / "manifest.json").read_text())
    last = len(manifest["shards"]) - 1
    return f"{corpus}/train-{{000000..{last:06d}}}.tar", manifest["train_samples"]


@torch.no_grad()
def evaluate(trainer, corpus: Path) -> dict:
    """Every held-out evaluation of the corpus on the trained model, as {metric: fraction}."""
    from superclip.demo import tag_hit_rates
    from superclip.evaluate.data import load_image, retrieval_pairs
    from superclip.evaluate.features import Encoder
    from superclip.evaluate.tasks import compositional_set, retrieval_file, segmentation_probe, zero_shot_folder
    from superclip.model import get_tokenizer, get_transforms

    model = trainer.model
    model.eval()
    encoder, preprocess, tokenizer = Encoder(model), get_transforms(model)[1], get_tokenizer(model.config)
    templates = [t for t in (corpus / "zeroshot" / "templates.txt").read_text().splitlines() if t]
    out = {}
    zs = zero_shot_folder(encoder, preprocess, tokenizer, str(corpus / "zeroshot"), None, templates)
    out.update(zeroshot_acc1=zs["acc1"], zeroshot_acc5=zs["acc5"])
    rt = retrieval_file(encoder, preprocess, tokenizer, str(corpus / "retrieval" / "retrieval.csv"))
    out.update({k: rt[k] for k in ("image_retrieval_recall@1", "text_retrieval_recall@1")})
    comp = compositional_set(encoder, preprocess, tokenizer, str(corpus / "compositional"))
    out.update({f"hardneg_{k.removesuffix('_acc')}": v for k, v in comp.items() if k.endswith("_acc")})
    out["hardneg_all"] = comp["acc"]
    seg = segmentation_probe(encoder, preprocess, str(corpus / "dense" / "train"), str(corpus / "dense" / "test"))
    out.update(dense_miou=seg["miou"], dense_pixel_acc=seg["pixel_acc"])
    images, captions, _ = retrieval_pairs(str(corpus / "retrieval" / "retrieval.csv"), "filepath", "title", None,
                                          "test", None, "txt")
    names = {w for c in captions for w in c.split()} - {"icon"}
    weights = trainer.criterion.token_weights() if trainer.criterion.idf_batch_size else None
    out.update(tag_hit_rates(model, [load_image(p) for p in images], captions, preprocess, tokenizer, weights,
                             attributes=names))
    out["tag@5_name_word"] = out.pop("tag@5_attribute_word")
    return out


def run(out: Path, corpus: Path, args, batch: int, lr: float, seed: int, name: str) -> dict:
    from superclip.config import TrainConfig
    from superclip.train.trainer import Trainer

    steps = args.samples // batch
    folder = out / f"batch_{batch}-lr{lr:g}-seed{seed}"
    settings = {"corpus": str(corpus), "model": args.model, "batch_size": batch, "steps": steps, "lr": lr,
                "seed": seed, "cls_loss_weight": RUNS[name], "warmup": max(1, round(args.warmup_share * steps))}
    done = folder / name.lower() / "eval.json"
    if done.exists() and json.loads(done.read_text())["settings"] == settings:
        print(f"reusing {done}", file=sys.stderr, flush=True)
        return json.loads(done.read_text())["metrics"]
    data, _ = shards_of(corpus)
    cfg = TrainConfig(model=args.model, train_data=data, dataset_type="webdataset", train_num_samples=steps * batch,
                      batch_size=batch, epochs=1, lr=lr, warmup=settings["warmup"], seed=seed,
                      cls_loss_weight=RUNS[name], logs=str(folder), name=name.lower(), log_every_n_steps=10,
                      progress=False, resume="latest")
    trainer = Trainer(cfg)
    trainer.fit()
    metrics = evaluate(trainer, corpus)
    for ckpt in (folder / name.lower() / "checkpoints").glob("*.pt"):  # 79 MB each: the last one is enough
        if ckpt.name != "epoch_latest.pt":
            ckpt.unlink()
    done.write_text(json.dumps({"settings": settings, "metrics": metrics}, indent=1) + "\n")
    return metrics


def fmt(values) -> str:
    return f"{100 * statistics.mean(values):.1f} ± {100 * (statistics.stdev(values) if len(values) > 1 else 0):.1f}"


def tables(rows: dict, args) -> str:
    """rows: (batch, lr, run) -> metric -> [value per seed]."""
    metrics = list(next(iter(rows.values())))
    lines = [f"Icons (`superclip data icons`, @iconify/json held-out sets), {args.model}, {args.samples} samples seen per "
             f"run, warm-up {args.warmup_share:.0%}, seeds {args.seeds}; %, mean ± std over seeds", "",
             "| batch | lr | run | " + " | ".join(metrics) + " |", "|---|---|---|" + "---|" * len(metrics)]
    lines += [f"| {b} | {lr:g} | {n} | " + " | ".join(fmt(v[m]) for m in metrics) + " |" for (b, lr, n), v in rows.items()]
    pairs = [(b, lr) for (b, lr, n) in rows if n == "SuperCLIP" and (b, lr, "CLIP") in rows]
    if pairs:
        lines += ["", "SuperCLIP − CLIP, paired by seed (same data, order and initial weights), points: mean ± std, "
                  "per seed, and in how many seeds SuperCLIP is ahead:", "",
                  "| batch | lr | metric | paired gap | per seed | ahead in |", "|---|---|---|---|---|---|"]
        for b, lr in pairs:
            for m in metrics:
                gaps = [s - c for s, c in zip(rows[(b, lr, "SuperCLIP")][m], rows[(b, lr, "CLIP")][m])]
                lines.append(f"| {b} | {lr:g} | {m} | {fmt(gaps)} | " + " / ".join(f"{100 * g:+.1f}" for g in gaps)
                             + f" | {sum(g > 0 for g in gaps)} of {len(gaps)} |")
    if len(args.batches) > 1:
        big = args.batches[0]
        lines += ["", f"Lost going from batch {big} to the smaller batch (same samples seen), points, per seed; the "
                  "last column: SuperCLIP loses less (CLIP's loss − SuperCLIP's, paired by seed):", "",
                  "| to | lr | metric | CLIP loses | SuperCLIP loses | SuperCLIP loses less by | in seeds |",
                  "|---|---|---|---|---|---|---|"]
        for small in args.batches[1:]:
            for lr in args.lrs:
                if not all((b, lr, n) in rows for b in (big, small) for n in RUNS):
                    continue
                for m in HEADLINE:
                    lost = {n: [a - s for a, s in zip(rows[(big, lr, n)][m], rows[(small, lr, n)][m])] for n in RUNS}
                    less = [c - s for c, s in zip(lost["CLIP"], lost["SuperCLIP"])]
                    lines.append(f"| batch {small} | {lr:g} | {m} | {fmt(lost['CLIP'])} | {fmt(lost['SuperCLIP'])} | "
                                 f"{fmt(less)} ({' / '.join(f'{100 * x:+.1f}' for x in less)}) | "
                                 f"{sum(x > 0 for x in less)} of {len(less)} |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default="runs/icons-corpus", help="the folder `superclip data icons --out` wrote")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 8], help="the large batch first")
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--samples", type=int, default=19200, help="samples seen per run")
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--model", default="SuperCLIP-Tiny")
    p.add_argument("--warmup-share", type=float, default=0.1)
    p.add_argument("--out", default="runs/icons-study")
    p.add_argument("--table", default=None, help="also write the tables here")
    args = p.parse_args()
    torch.set_num_threads(1)
    corpus, out = Path(args.corpus), Path(args.out)
    if not (corpus / "manifest.json").is_file():
        sys.exit(f"{corpus} holds no icon corpus: make it with superclip data icons --out {corpus}")
    rows = {}
    for batch in args.batches:
        for lr in args.lrs:
            for seed in args.seeds:
                for name in args.runs:
                    metrics = run(out, corpus, args, batch, lr, seed, name)
                    for m, v in metrics.items():
                        rows.setdefault((batch, lr, name), {}).setdefault(m, []).append(v)
                print(f"done: batch {batch}, lr {lr:g}, seed {seed}", file=sys.stderr, flush=True)
    text = tables(rows, args)
    print(text)
    if args.table:
        Path(args.table).write_text(text)


if __name__ == "__main__":
    main()
