"""The exported model folder: exactly what open_clip's ``hf-hub:`` and ``local-dir:`` read, plus our head.

    open_clip_config.json          {"model_cfg", "preprocess_cfg"}: open_clip builds the model from it
    open_clip_model.safetensors    the open_clip model's weights (the head is not in them)
    superclip_head.safetensors     head.norm.*, head.fc.*, the IDF statistics loss.cap_fq / loss.num_samples
                                   (float64), and our model config in its metadata (``superclip_config``)
    README.md                      model card: how to load it, the config, training data and metrics

``open_clip.create_model_and_transforms("local-dir:OUT")`` loads it unchanged (it prefers
``open_clip_model.safetensors``); ``superclip.create_model("local-dir:OUT")`` (or ``--pretrained OUT``) loads the
head too, so ``superclip tag / classify / eval`` work on the folder.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import open_clip
import torch

from .. import hub
from ..errors import ConfigError
from ..files import atomic_write, atomic_write_text
from ..model import SuperCLIP, openclip_config
from ..strict_json import dumps
from ..weights import versions

log = logging.getLogger(__name__)


def _safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    from safetensors.torch import save

    # own, contiguous CPU storage per tensor: safetensors refuses shared or strided tensors
    return save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, metadata=metadata)


def _card(model: SuperCLIP, name: str, train: dict[str, Any] | None, metrics: dict[str, Any] | None,
          has_stats: bool) -> str:
    lines = ["---", "library_name: open_clip", "pipeline_tag: zero-shot-image-classification",
             "tags: [clip, superclip, open_clip, zero-shot-image-classification]", "---", "",
             f"# {name}", "",
             "A SuperCLIP model (CLIP + a caption-token classification head on the image tower), exported by "
             f"superclip {versions().get('superclip', '')}.", "",
             "## Use", "", "```python", "import open_clip  # the CLIP model: image and text embeddings",
             "model, _, preprocess = open_clip.create_model_and_transforms('hf-hub:ORG/REPO')  # or 'local-dir:PATH'",
             "", "import superclip  # the same model with its classification head (token_logits, tagging)",
             "model = superclip.create_model('hf-hub:ORG/REPO')", "```", "",
             "`superclip tag --pretrained hf-hub:ORG/REPO IMAGES...` lists the words the head predicts for images.",
             "", "## Model config", "", "```json", json.dumps(model.config, indent=2), "```", ""]
    lines += ["## Training data", ""]
    if train:
        keys = ("train_data", "dataset_type", "train_num_samples", "epochs", "batch_size", "accum_freq",
                "world_size", "steps", "lr", "warmup", "precision", "cls_loss_weight", "contrastive", "idf", "seed")
        lines += [f"- {k}: `{train[k]}`" for k in keys if train.get(k) not in (None, "")]
    else:
        lines.append("Not recorded in the exported checkpoint.")
    lines.append(f"- IDF statistics included: {'yes' if has_stats else 'no'}")
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    else:
        lines.append("No evaluation was recorded for this checkpoint.")
    return "\n".join(lines) + "\n"


def run_metrics(checkpoint: str | None, step: int | None) -> dict[str, Any] | None:
    """The last evaluation logged up to ``step`` in the run folder of a training checkpoint
    (``RUN/checkpoints/X.pt`` -> ``RUN/metrics.jsonl``), or None."""
    if not checkpoint:
        return None
    path = Path(checkpoint).resolve().parent.parent / "metrics.jsonl"
    if not path.is_file():
        return None
    evals: list[dict[str, Any]] = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "loss" not in record and (step is None or record.get("step", 0) <= step):
            evals.append(record)
    return evals[-1] if evals else None


def write_head(model: SuperCLIP, out: Path, stats: dict[str, torch.Tensor] | None = None) -> Path:
    """``out/superclip_head.safetensors``: the head's weights, the IDF statistics, our config in the metadata."""
    head = {f"head.{k}": v for k, v in model.head.state_dict().items()}
    head.update({f"loss.{k}": v.to(torch.float64) for k, v in (stats or {}).items()})
    data = _safetensors_bytes(head, {"superclip_config": json.dumps(model.config), "format": "superclip-head"})
    atomic_write(out / hub.HEAD_FILE, lambda f: f.write(data))
    return out / hub.HEAD_FILE


def export_folder(model: SuperCLIP, out_dir, stats: dict[str, torch.Tensor] | None = None,
                  train: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                  name: str | None = None) -> Path:
    """Write the model folder (see the module docstring). ``stats``: the loss's IDF statistics to keep with the
    head; ``train`` / ``metrics``: what the model card reports."""
    if model.config is None:
        raise ConfigError("model has no config to export")
    out = Path(out_dir)
    config = {"model_cfg": openclip_config(model.config),
              "preprocess_cfg": open_clip.get_model_preprocess_cfg(model.clip)}
    try:
        out.mkdir(parents=True, exist_ok=True)
        weights = _safetensors_bytes(model.clip.state_dict())
        atomic_write(out / hub.FOLDER_WEIGHTS[0], lambda f: f.write(weights))
        write_head(model, out, stats)
        atomic_write_text(dumps(config, indent=2) + "\n", out / hub.FOLDER_CONFIG)
        atomic_write_text(_card(model, name or out.resolve().name, train, metrics, bool(stats)), out / "README.md")
    except OSError as e:
        raise ConfigError(f"cannot write to {out}: {e.strerror or e}") from None
    stale = out / hub.FOLDER_WEIGHTS[1]  # an older export's .bin would shadow nothing, but confuse readers
    if stale.exists():
        log.warning("%s is left from an earlier export; open_clip reads %s first", stale, hub.FOLDER_WEIGHTS[0])
    return out


def export_openclip(model: SuperCLIP, out_dir) -> Path:
    """Backward-compatible name of :func:`export_folder` (now also writes the head and a model card)."""
    return export_folder(model, out_dir)
