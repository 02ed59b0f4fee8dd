"""``superclip demo``: CLIP (λ = 0) and SuperCLIP (λ = 1) trained side by side on a synthetic family, at a
larger and a small batch with the same samples seen (the paper's Fig. 4 setting), then evaluated on every
zero-shot task, caption retrieval, the head as a tagger and hard negatives. Returns a report; the CLI prints
it."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from .config import DEMO_FAMILY, DEMO_LR, TrainConfig
from .data.families import get_family
from .data.synth_sets import write_compositional, write_masks
from .evaluate.features import Encoder
from .evaluate.tags import FUNCTION_WORDS, TagTable, excluded_token_ids
from .evaluate.tasks import compositional_set, segmentation_probe
from .evaluate.zero_shot import classifier_weights, zero_shot_metrics
from .files import atomic_write_text
from .model import get_tokenizer, get_transforms
from .strict_json import dumps
from .train.run_folder import read_metrics
from .train.trainer import Trainer

N_EXAMPLES = 6
# The hard negatives every demo run is scored on: eval_samples test images drawn with bench/fine_grained.py's set
# seed, so at the default 500 the demo's row is seed 0 of docs/studies/fine-grained-textures.md. The dense probe is
# left to `superclip eval` and the studies: on four runs it took 100 s of the demo (over its 10 minutes).
FINE_SET_SEED = 1000


@torch.no_grad()
def evaluate_synthetic(model, num_samples: int = 500, seed: int = 0, token_weights=None,
                       family: str = "scenes", with_examples: bool = False) -> Dict[str, float]:
    """Zero-shot acc1 on every task of a synthetic family, text->image / image->text R@1 on detailed test
    captions, and the head's tag hit rates (``token_weights``: the run's IDF weights, to leave out words in every
    caption; each image's most probable words, function words left out: the head's own answer, any word of the
    vocabulary, so that an untrained head scores near 0). ``with_examples``: also return, for the first test images
    of the combined task, the model's answer and the head's top 3 tags (the demo's picture)."""
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
        if task == fam.tasks[2]:  # the picture's examples: the first test images, answer and top tags
            answers = (feats[:N_EXAMPLES] @ weights.T).argmax(dim=-1).tolist()
            tagger = TagTable(tokenizer, 3, excluded_token_ids(tokenizer, token_weights))
            logits = model.token_logits(torch.stack([preprocess(im) for im in images[:N_EXAMPLES]]))
            examples = [{"truth": classnames[labels[i]], "answer": classnames[a],
                         "tags": [w for w, _ in tags]}
                        for (i, a), tags in zip(enumerate(answers), tagger.most_probable(logits))]
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
    if with_examples:
        return out, examples
    return out


@torch.no_grad()
def tag_hit_rates(model, images, captions, preprocess, tokenizer, token_weights=None, k: int = 5,
                  attributes=None, words_used=None) -> Dict[str, float]:
    """The head as a tagger (each image's most probable words, :meth:`~superclip.evaluate.tags.TagTable.most_probable`;
    ``words_used``: the only words that may be tags):
    share of images with a content word of their caption among the k tags (``tag@5_caption_word``; function words
    such as "a" or "of" never count), and with an attribute word of their caption (``tag@5_attribute_word``; the
    scenes' colours and shapes by default). Words present in every training caption (IDF weight 0) are never
    tags."""
    tagger = TagTable(tokenizer, k, excluded_token_ids(tokenizer, token_weights), words_used)
    logits = model.token_logits(torch.stack([preprocess(im) for im in images]))
    attributes = set(attributes if attributes is not None else get_family("scenes").attributes)
    any_hit = attr_hit = 0
    for tags, text in zip(tagger.most_probable(logits), captions):
        words = set(text.replace(",", " ").split()) - FUNCTION_WORDS
        tags = {w for w, _ in tags}
        any_hit += bool(tags & words)
        attr_hit += bool(tags & words & attributes)
    return {f"tag@{k}_caption_word": any_hit / len(captions), f"tag@{k}_attribute_word": attr_hit / len(captions)}


def fine_grained_sets(folder: Path, family: str, seed: int = FINE_SET_SEED, items: int = 500,
                      mask_train: int = 200, mask_test: int = 100) -> Path:
    """Hard negatives of ``items`` test images and (``mask_train`` > 0) masked images for the dense probe, written
    once under ``folder`` (``done`` marks a complete set; a set cut short is written again)."""
    import shutil

    folder = Path(folder)
    if not (folder / "done").exists():
        shutil.rmtree(folder, ignore_errors=True)
        write_compositional(str(folder / "compositional"), family, items, 64, seed)
        if mask_train > 0:
            write_masks(str(folder / "masks" / "train"), family, mask_train, 64, seed, "train")
            write_masks(str(folder / "masks" / "test"), family, mask_test, 64, seed, "test")
        (folder / "done").write_text("")
    return folder


@torch.no_grad()
def evaluate_fine_grained(model, sets: Path) -> Dict[str, float]:
    """On the sets of :func:`fine_grained_sets`: ``compositional_acc`` (SugarCrepe's rule over every hard negative),
    ``compositional_mean_type_acc`` and ``compositional_TYPE_acc``; where the sets hold masks, ``dense_miou`` and
    ``dense_pixel_acc`` (the linear probe on frozen patch tokens)."""
    model.eval()
    encoder, preprocess = Encoder(model), get_transforms(model)[1]
    comp = compositional_set(encoder, preprocess, get_tokenizer(model.config), str(sets / "compositional"))
    out = {f"compositional_{k}": v for k, v in comp.items() if k.endswith("acc")}
    if (sets / "masks").is_dir():
        seg = segmentation_probe(encoder, preprocess, str(sets / "masks" / "train"), str(sets / "masks" / "test"))
        out.update(dense_miou=seg["miou"], dense_pixel_acc=seg["pixel_acc"])
    model.train()
    return out


DEFAULT_RUNS = (("CLIP", {"cls_loss_weight": 0.0}), ("SuperCLIP", {"cls_loss_weight": 1.0}))


def run_demo(out_dir: Path, steps: int = 150, batch_size: int = 64, seed: int = 0, lr: float = DEMO_LR,
             eval_samples: int = 500, model: str = "SuperCLIP-Tiny",
             on_step: Optional[Callable[[str, int, Dict], None]] = None,
             runs: Sequence[Tuple[str, Dict]] = DEFAULT_RUNS, long_caption_ratio: Optional[float] = 0.5,
             family: str = "scenes", data_seed: Optional[int] = None, warmup: Optional[int] = None,
             fine_sets: Optional[Path] = None) -> Dict:
    """Train each run (name, TrainConfig overrides) with identical seed, data, steps and batch, evaluate all,
    write report.json and demo.png. Training captions: short or detailed, detailed with ``long_caption_ratio``.
    ``data_seed``: seeds the training and test data apart from the initial weights (``seed``); ``warmup``: steps
    (default a tenth of them); ``fine_sets``: also score every run on these fine-grained sets
    (:func:`fine_grained_sets`).

    The tagger's excluded words come from the first run that kept IDF statistics, the same for every run.
    """
    out_dir = Path(out_dir)
    report = {"settings": {"model": model, "steps": steps, "batch_size": batch_size, "seed": seed, "lr": lr,
                           "eval_samples": eval_samples, "long_caption_ratio": long_caption_ratio,
                           **({"family": family} if family != "scenes" else {}),
                           **({"data_seed": data_seed} if data_seed is not None else {}),
                           **({"warmup": warmup} if warmup is not None else {})}, "runs": {}}
    trained = {}
    for name, overrides in runs:
        base = dict(model=model, dataset_type=f"synthetic-{family}", train_num_samples=steps * batch_size,
                    batch_size=batch_size, epochs=1, lr=lr, warmup=max(1, steps // 10) if warmup is None else warmup,
                    seed=seed, data_seed=data_seed,
                    long_caption_ratio=long_caption_ratio, logs=str(out_dir), name=name.lower(),
                    log_every_n_steps=1, progress=False, resume="latest")  # an interrupted demo continues
        trainer = Trainer(TrainConfig(**{**base, **overrides}))
        trainer.fit(None if on_step is None else (lambda s, m, n=name: on_step(n, s, m)))
        history = [m for m in read_metrics(trainer.dir / "metrics.jsonl") if "loss" in m]  # also steps resumed
        trained[name] = (trainer, history)
    weights = next((t.criterion.token_weights() for t, _ in trained.values() if t.criterion.idf_batch_size), None)
    for name, (trainer, history) in trained.items():
        metrics, examples = evaluate_synthetic(trainer.model, eval_samples, trainer.cfg.seed_of_data, weights, family,
                                               with_examples=True)
        if fine_sets is not None:
            metrics.update(evaluate_fine_grained(trainer.model, fine_sets))
        report["runs"][name] = {"config": dict(runs)[name], "metrics": metrics, "examples": examples,
                                "history": [{k: h[k] for k in ("step", "loss", "contrastive_loss", "class_loss")}
                                            for h in history]}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dumps(report, indent=2) + "\n", out_dir / "report.json")
    plot_demo(report, out_dir / "demo.png")
    return report


def run_regimes(out_dir: Path, samples: int = 4800, batches: Sequence[int] = (32, 8), seed: int = 0,
                lr: float = DEMO_LR, eval_samples: int = 500, family: str = DEMO_FAMILY,
                on_step: Optional[Callable[[str, int, Dict], None]] = None) -> Dict:
    """:func:`run_demo` at each batch size with the same ``samples`` seen (``out_dir/batch_B``), every run also
    scored on hard negatives (``out_dir/fine-sets``, written first); the combined
    report has every regime and, per model, what each metric loses from the first batch size to each other one
    (the quantity of the paper's Fig. 4). Writes ``out_dir/report.json`` and ``out_dir/demo.png``."""
    out_dir = Path(out_dir)
    report = {"settings": {"samples": samples, "batches": list(batches), "seed": seed, "lr": lr,
                           "eval_samples": eval_samples, "family": family}, "regimes": {}, "lost": {}}
    fine_sets = fine_grained_sets(out_dir / "fine-sets", family, FINE_SET_SEED, eval_samples, 0, 0)
    for batch in batches:
        steps = max(1, samples // batch)
        report["regimes"][f"batch {batch}"] = run_demo(
            out_dir / f"batch_{batch}", steps=steps, batch_size=batch, seed=seed, lr=lr, eval_samples=eval_samples,
            family=family, on_step=None if on_step is None else (lambda n, s, m, b=batch: on_step(f"{n} b{b}", s, m)),
            fine_sets=fine_sets)
    first, *others = report["regimes"]
    for other in others:
        for name, run in report["regimes"][other]["runs"].items():
            base = report["regimes"][first]["runs"][name]["metrics"]
            report["lost"].setdefault(other, {})[name] = {k: base[k] - v for k, v in run["metrics"].items()}
    atomic_write_text(dumps(report, indent=2) + "\n", out_dir / "report.json")
    plot_regimes(report, out_dir / "demo.png")
    return report


def plot_regimes(report: Dict, path: Path) -> Path:
    """Top: each regime's training losses and test metrics; bottom: test images of the combined zero-shot task
    with each model's answer at every batch size and SuperCLIP's top tags (from its small-batch run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings, regimes = report["settings"], report["regimes"]
    fam = get_family(settings["family"])
    images = fam.zero_shot_task(fam.tasks[2], N_EXAMPLES, 64, settings["seed"])[0]
    n = len(regimes)
    fig = plt.figure(figsize=(max(4.2 * (n + 1), 2.5 * N_EXAMPLES), 8.5), dpi=110)  # room for the answers
    grid = fig.add_gridspec(2, max(n + 1, N_EXAMPLES), height_ratios=[1.1, 1])
    span = max(n + 1, N_EXAMPLES) // (n + 1)
    for j, (label, rep) in enumerate(regimes.items()):
        ax = fig.add_subplot(grid[0, j * span:(j + 1) * span])
        for name, run in rep["runs"].items():
            steps = [h["step"] for h in run["history"]]
            ax.plot(steps, [h["contrastive_loss"] for h in run["history"]], label=f"{name} contrastive")
            if any(h["class_loss"] for h in run["history"]):
                ax.plot(steps, [h["class_loss"] for h in run["history"]], ":", label=f"{name} class")
        ax.set_title(f"{label}: training losses", fontsize=9), ax.set_xlabel("step"), ax.grid(alpha=.3)
        ax.legend(fontsize=7)
    ax = fig.add_subplot(grid[0, n * span:])
    keys = [f"zeroshot_{t}_acc1" for t in fam.tasks] + ["image_retrieval_recall@1"]
    bars = [(f"{name} {label.replace('batch ', 'b')}", run["metrics"]) for label, rep in regimes.items()
            for name, run in rep["runs"].items()]
    width = 0.8 / len(bars)
    for j, (label, metrics) in enumerate(bars):
        ax.bar([i + (j - (len(bars) - 1) / 2) * width for i in range(len(keys))],
               [100 * (metrics[k] or 0) for k in keys], width, label=label)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([k.replace("zeroshot_", "").replace("_acc1", "").replace("image_retrieval_recall@1",
                                                                                "t→i R@1") for k in keys], fontsize=8)
    ax.set_title("test split, %", fontsize=9), ax.legend(fontsize=7), ax.grid(axis="y", alpha=.3)
    small = list(regimes)[-1]
    for i, image in enumerate(images):
        ax = fig.add_subplot(grid[1, i])
        ax.imshow(image), ax.set_xticks([]), ax.set_yticks([])
        runs = {f"{name} {label.replace('batch ', 'b')}": run for label, rep in regimes.items()
                for name, run in rep["runs"].items()}
        truth = next(iter(runs.values()))["examples"][i]["truth"]
        lines = [f"truth: {truth}"]
        for label, run in runs.items():
            answer = run["examples"][i]["answer"]
            lines.append(f"{label}: {answer} {'✓' if answer == truth else '✗'}")
        tags = regimes[small]["runs"].get("SuperCLIP", {}).get("examples", [{}] * N_EXAMPLES)[i].get("tags")
        if tags:
            lines.append("tags: " + ", ".join(tags))
        ax.set_xlabel("\n".join(lines), fontsize=6.5, loc="left")
    fig.suptitle(f"CLIP vs SuperCLIP on the {settings['family']}, {settings['samples']} samples seen per run, "
                 f"lr {settings['lr']:g}, seed {settings['seed']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


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
