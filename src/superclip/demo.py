"""``superclip demo``: CLIP (λ = 0) and SuperCLIP (λ = 1) trained side by side on the synthetic scenes, then
evaluated on every zero-shot task and on caption retrieval. Returns a report; the CLI prints it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from .config import TrainConfig
from .data.families import get_family
from .evaluate.tags import excluded_token_ids, top_tags
from .evaluate.zero_shot import classifier_weights, zero_shot_metrics
from .model import get_tokenizer, get_transforms
from .train.run_folder import read_metrics
from .train.trainer import Trainer


@torch.no_grad()
def evaluate_synthetic(model, num_samples: int = 500, seed: int = 0, token_weights=None,
                       family: str = "scenes") -> Dict[str, float]:
    """Zero-shot acc1 on every task of a synthetic family, text->image / image->text R@1 on detailed test
    captions, and the head's tag hit rates (``token_weights``: the run's IDF weights, to leave out words in every
    caption)."""
    fam = get_family(family)
    model.eval()
    _, preprocess = get_transforms(model)
    tokenizer = get_tokenizer(model.config)
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    out = {}
    for task in fam.tasks:
        images, labels, classnames, templates = fam.zero_shot_task(task, num_samples, size, seed)
        feats = model.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True)
        weights = classifier_weights(lambda t: model.encode_text(t), tokenizer, classnames, templates)
        out[f"zeroshot_{task}_acc1"] = zero_shot_metrics(feats, weights, torch.tensor(labels))["acc1"]
    data = fam.dataset(num_samples, image_size=size, seed=seed + 1, split="test", detailed_prob=1.0)
    pairs = [data[i] for i in range(num_samples)]
    img = model.encode_image(torch.stack([preprocess(im) for im, _ in pairs]), normalize=True)
    txt = model.encode_text(tokenizer([c for _, c in pairs]), normalize=True)
    sim = txt @ img.T
    target = torch.arange(num_samples)
    out["image_retrieval_recall@1"] = (sim.argmax(dim=1) == target).float().mean().item()
    out["text_retrieval_recall@1"] = (sim.argmax(dim=0) == target).float().mean().item()
    out.update(tag_hit_rates(model, [im for im, _ in pairs], [c for _, c in pairs], preprocess, tokenizer,
                             token_weights, attributes=fam.attributes))
    model.train()
    return out


@torch.no_grad()
def tag_hit_rates(model, images, captions, preprocess, tokenizer, token_weights=None, k: int = 5,
                  attributes=None) -> Dict[str, float]:
    """The head as a tagger: share of images with a word of their caption among the top-k tags
    (``tag@5_caption_word``), and with an attribute word of their caption (``tag@5_attribute_word``; the
    scenes' colours and shapes by default). Words present in every training caption (IDF weight 0) are never
    tags."""
    exclude = excluded_token_ids(tokenizer, token_weights)
    logits = model.token_logits(torch.stack([preprocess(im) for im in images]))
    attributes = set(attributes if attributes is not None else get_family("scenes").attributes)
    any_hit = attr_hit = 0
    for row, text in zip(logits, captions):
        words = set(text.replace(",", " ").split())
        tags = {w for w, _ in top_tags(row, tokenizer, k, exclude)}
        any_hit += bool(tags & words)
        attr_hit += bool(tags & words & attributes)
    return {f"tag@{k}_caption_word": any_hit / len(captions), f"tag@{k}_attribute_word": attr_hit / len(captions)}


DEFAULT_RUNS = (("CLIP", {"cls_loss_weight": 0.0}), ("SuperCLIP", {"cls_loss_weight": 1.0}))


def run_demo(out_dir: Path, steps: int = 150, batch_size: int = 64, seed: int = 0, lr: float = 2e-3,
             eval_samples: int = 500, model: str = "SuperCLIP-Tiny",
             on_step: Optional[Callable[[str, int, Dict], None]] = None,
             runs: Sequence[Tuple[str, Dict]] = DEFAULT_RUNS, long_caption_ratio: Optional[float] = 0.5,
             family: str = "scenes") -> Dict:
    """Train each run (name, TrainConfig overrides) with identical seed, data, steps and batch, evaluate all,
    write report.json and demo.png. Training captions: short or detailed, detailed with ``long_caption_ratio``.

    The tagger's excluded words come from the first run that kept IDF statistics, the same for every run.
    """
    out_dir = Path(out_dir)
    report = {"settings": {"model": model, "steps": steps, "batch_size": batch_size, "seed": seed, "lr": lr,
                           "eval_samples": eval_samples, "long_caption_ratio": long_caption_ratio,
                           **({"family": family} if family != "scenes" else {})}, "runs": {}}
    trained = {}
    for name, overrides in runs:
        base = dict(model=model, dataset_type=f"synthetic-{family}", train_num_samples=steps * batch_size,
                    batch_size=batch_size, epochs=1, lr=lr, warmup=max(1, steps // 10), seed=seed,
                    long_caption_ratio=long_caption_ratio, logs=str(out_dir), name=name.lower(),
                    log_every_n_steps=1, progress=False, resume="latest")  # an interrupted demo continues
        trainer = Trainer(TrainConfig(**{**base, **overrides}))
        trainer.fit(None if on_step is None else (lambda s, m, n=name: on_step(n, s, m)))
        history = [m for m in read_metrics(trainer.dir / "metrics.jsonl") if "loss" in m]  # also steps resumed
        trained[name] = (trainer, history)
    weights = next((t.criterion.token_weights() for t, _ in trained.values() if t.criterion.idf_batch_size), None)
    for name, (trainer, history) in trained.items():
        report["runs"][name] = {"config": dict(runs)[name],
                                "metrics": evaluate_synthetic(trainer.model, eval_samples, seed, weights, family),
                                "history": [{k: h[k] for k in ("step", "loss", "contrastive_loss", "class_loss")}
                                            for h in history]}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_demo(report, out_dir / "demo.png")
    return report


def plot_demo(report: Dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    for name, run in report["runs"].items():
        steps = [h["step"] for h in run["history"]]
        ax1.plot(steps, [h["contrastive_loss"] for h in run["history"]], label=f"{name} contrastive")
        if any(h["class_loss"] for h in run["history"]):
            ax1.plot(steps, [h["class_loss"] for h in run["history"]], ":", label=f"{name} class")
    ax1.set_xlabel("step"), ax1.set_ylabel("loss"), ax1.set_title("training losses"), ax1.legend(), ax1.grid(alpha=.3)
    keys = list(next(iter(report["runs"].values()))["metrics"])
    n = len(report["runs"])
    width = 0.8 / n
    for j, (name, run) in enumerate(report["runs"].items()):
        xs = [i + (j - (n - 1) / 2) * width for i in range(len(keys))]
        ax2.bar(xs, [100 * (run["metrics"][k] or 0) for k in keys], width, label=name)
    ax2.set_xticks(range(len(keys)))
    ax2.set_xticklabels([k.replace("zeroshot_", "").replace("_acc1", "").replace("_recall@1", " R@1")
                         .replace("_retrieval", "").replace("_word", "") for k in keys],
                        rotation=20, fontsize=8)
    ax2.set_ylabel("%"), ax2.set_title("test split: zero-shot accuracy, retrieval R@1, tagger hit rate"), ax2.legend()
    ax2.grid(axis="y", alpha=.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
