"""Model weights in every format, and models made from them: our checkpoint files (save / read), the official
SuperCLIP release, open_clip weights, model folders in open_clip's hub / ``local-dir:`` layout (written by
:mod:`superclip.export`), local or ``hf-hub:``; ``create_model`` / ``load_model`` resolve a config and a
``pretrained`` source into a model. (What a training *run* saves and resumes is :mod:`superclip.train.run_state`.)

Our checkpoint file: ``{"format": "superclip", "config", "model", "loss", ...training state}``; a readable
``.json`` beside it holds the config, step and versions. The official layout (METHOD.md): ``{"state_dict"}``
with optional ``module.`` prefix, ``visual.*``, ``text.*``, ``text_decoder.ln_mlp.*``,
``text_decoder.text_projection.*``, ``logit_scale`` and the statistics ``cap_fq`` / ``num_samples``.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import open_clip
import torch

from . import hub
from .errors import CheckpointError, ConfigError
from .files import atomic_torch_save, atomic_write_text
from .model import ModelCfg, SuperCLIP, build_model, resolve_model_config
from .strict_json import dumps

log = logging.getLogger(__name__)

FORMAT = "superclip"
STAT_KEYS = ("cap_fq", "num_samples")
# official name -> ours, for the classification head
_OFFICIAL_HEAD = {"text_decoder.ln_mlp.": "head.norm.", "text_decoder.text_projection.": "head.fc."}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("superclip", "torch", "open_clip_torch", "timm"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def save_checkpoint(path: os.PathLike, model: SuperCLIP, criterion: torch.nn.Module | None = None,
                    model_state: dict[str, torch.Tensor] | None = None, **state: Any) -> None:
    """Write ``path`` (weights, loss statistics, any extra training ``state``) and ``path.json`` (readable meta).

    ``state`` values must be plain Python / tensors (optimizer and scheduler state dicts, step, RNG states...).
    ``model_state``: the weights to write instead of ``model.state_dict()`` (the gathered state of a sharded model).
    """
    weights = model.state_dict() if model_state is None else model_state
    ckpt = {"format": FORMAT, "config": model.config, "model": weights, **state}
    if criterion is not None:
        ckpt["loss"] = criterion.state_dict()
    atomic_torch_save(ckpt, path)
    meta = {"config": model.config, "versions": versions(),
            **{k: v for k, v in state.items() if isinstance(v, (int, float, str, bool, type(None)))}}
    atomic_write_text(dumps(meta, indent=2, default=str) + "\n", Path(str(path) + ".json"))


def read_checkpoint(path: os.PathLike) -> dict[str, Any]:
    """Load a checkpoint file to CPU (``weights_only``); a clear error if missing or unreadable."""
    path = Path(path)
    if path.is_dir():  # a folder that is not a model folder (those are read by load_model, not here)
        if (path / "onnx.json").is_file() or (path / "image_encoder.onnx").is_file():
            raise CheckpointError(f"{path} is an ONNX export (image_encoder.onnx, text_encoder.onnx): run it with "
                                  "onnxruntime; superclip loads checkpoint files and open_clip model folders "
                                  f"(superclip export --format open_clip)")
        if (path / "config.json").is_file() and (path / hub.HEAD_FILE).is_file():
            raise CheckpointError(f"{path} is a transformers export: load it with transformers.CLIPModel; "
                                  "superclip loads checkpoint files and open_clip model folders "
                                  "(superclip export --format open_clip)")
        raise CheckpointError(f"{path} is a folder without {hub.FOLDER_CONFIG}: name a checkpoint file, or an "
                              "open_clip model folder")
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file: report them as one user error
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if not zipfile.is_zipfile(path) or "zip archive" in first or "central directory" in first:
            reason = "not a complete torch checkpoint (empty, truncated, or another kind of file)"
        elif "Weights only load failed" in first:  # torch's advice to turn weights_only off is not ours to give
            reason = "it holds objects other than tensors and plain values, which superclip never unpickles"
        else:
            reason = first or type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"cannot read checkpoint {path}: it holds a {type(ckpt).__name__}, not a state dict")
    return ckpt


def _strip_module(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v for k, v in sd.items()}


def checkpoint_kind(ckpt: dict[str, Any]) -> str:
    """``superclip``, ``official`` (released SuperCLIP training checkpoint) or ``open_clip`` (CLIP weights)."""
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        return "superclip"
    sd = _strip_module(ckpt.get("state_dict", ckpt))
    if any(k.startswith("text_decoder.") for k in sd) or "cap_fq" in sd:
        return "official"
    return "open_clip"


def official_to_superclip(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Official state dict -> (our model state dict, loss statistics {cap_fq, num_samples} as float64)."""
    model_sd, stats = {}, {}
    for k, v in _strip_module(sd).items():
        if k in STAT_KEYS:
            stats[k] = v.to(torch.float64).reshape(1, -1) if k == "cap_fq" else v.to(torch.float64).reshape(1, 1)
            continue
        for old, new in _OFFICIAL_HEAD.items():
            if k.startswith(old):
                model_sd[new + k[len(old):]] = v
                break
        else:
            model_sd["clip." + k] = v
    return model_sd, stats


def superclip_to_official(model: SuperCLIP, criterion: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Our model (+ statistics) as an official-layout state dict (inverse of :func:`official_to_superclip`)."""
    inverse = {new: old for old, new in _OFFICIAL_HEAD.items()}
    out = {}
    for k, v in model.state_dict().items():
        for new, old in inverse.items():
            if k.startswith(new):
                out[old + k[len(new):]] = v
                break
        else:
            out[k[len("clip."):]] = v
    if criterion is not None:
        out.update({k: getattr(criterion, k) for k in STAT_KEYS})
    return out


def _load_strict(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with one readable error line instead of torch's long report."""
    own = model.state_dict()
    for key in ("clip.logit_scale", "clip.logit_bias"):  # scalar vs (1,) (open_clip's nonscalar_logit_scale)
        if key in sd and key in own and sd[key].shape != own[key].shape and sd[key].numel() == own[key].numel():
            sd = {**sd, key: sd[key].reshape(own[key].shape)}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[0]})")
        raise CheckpointError(f"checkpoint {source} does not fit the model config: " + "; ".join(parts))
    model.load_state_dict(sd, strict=True)


def _token_stats(ckpt: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The loss statistics {cap_fq (1, V), num_samples (1, 1)} a loaded checkpoint holds, or None."""
    kind = checkpoint_kind(ckpt)
    if kind == "superclip":
        loss_sd = ckpt.get("loss") or {}
        return {k: loss_sd[k] for k in STAT_KEYS if k in loss_sd} or None
    if kind == "official":
        return official_to_superclip(ckpt.get("state_dict", ckpt))[1] or None
    return None


def load_into(model: SuperCLIP, path: os.PathLike, ckpt: dict[str, Any] | None = None) -> dict | None:
    """Load weights from ``path`` (any supported kind, or a model folder) into ``model``; return loss statistics
    if it has any."""
    if ckpt is None and is_model_folder(path):
        return _load_folder(model, Path(path))
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    kind = checkpoint_kind(ckpt)
    if kind == "superclip":
        _load_strict(model, _strip_module(ckpt["model"]), str(path))
        return _token_stats(ckpt)
    if kind == "official":
        _load_strict(model, official_to_superclip(ckpt.get("state_dict", ckpt))[0], str(path))
        return _token_stats(ckpt)
    try:
        open_clip.load_checkpoint(model.clip, str(path), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit the model config: {str(e).splitlines()[0]}") from None
    log.warning("loaded open_clip weights from %s: the classification head is freshly initialised", path)
    return None


def load_token_stats(path: os.PathLike) -> dict[str, torch.Tensor] | None:
    """The loss statistics {cap_fq (1, V), num_samples (1, 1)} stored in a checkpoint, or None.

    ``criterion.load_state_dict(load_token_stats(path))`` continues an official or superclip run's IDF.
    """
    path = resolve_pretrained(None, str(path)) if str(path).startswith((hub.PREFIX, "local-dir:")) else path
    if is_model_folder(path):
        return read_head_file(Path(path))[2]
    return _token_stats(read_checkpoint(path))


def is_model_folder(path: os.PathLike) -> bool:
    """A folder in open_clip's hub / ``local-dir:`` layout (``open_clip_config.json`` + weights)."""
    return Path(path).is_dir() and (Path(path) / hub.FOLDER_CONFIG).is_file()


def folder_weights(folder: Path) -> Path:
    for name in hub.FOLDER_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"model folder {folder} has no weights ({' or '.join(hub.FOLDER_WEIGHTS)})")


def read_head_file(folder: Path, tensors: bool = True) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor] | None,
                                                               dict[str, torch.Tensor] | None]:
    """(our model config, head state dict, loss statistics) from a folder's head file; Nones without one.
    ``tensors=False``: the config alone (the file's metadata; no tensor is read)."""
    from safetensors import safe_open

    path = folder / hub.HEAD_FILE
    if not path.is_file():
        return None, None, None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            read = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
        config = json.loads(meta["superclip_config"]) if "superclip_config" in meta else None
    except Exception as e:  # a truncated or foreign file
        raise CheckpointError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None
    head = {k[len("head."):]: v for k, v in read.items() if k.startswith("head.")}
    stats = {k[len("loss."):]: v for k, v in read.items() if k.startswith("loss.")}
    return config, head, stats or None


def folder_config(folder: Path) -> dict[str, Any]:
    """The model config of a model folder: ours from the head file, else open_clip's ``model_cfg`` (+ its
    preprocessing) as a SuperCLIP config with the CLIP vocabulary."""
    config = read_head_file(folder, tensors=False)[0]
    if config is not None:
        return config
    try:
        oc = json.loads((folder / hub.FOLDER_CONFIG).read_text())
        config = dict(oc["model_cfg"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{folder / hub.FOLDER_CONFIG} is not an open_clip config ({e})") from None
    if oc.get("preprocess_cfg"):
        config["preprocess_cfg"] = oc["preprocess_cfg"]
    return config


def _load_folder(model: SuperCLIP, folder: Path) -> dict[str, torch.Tensor] | None:
    weights = folder_weights(folder)
    try:
        open_clip.load_checkpoint(model.clip, str(weights), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"weights {weights} do not fit the model config: {str(e).splitlines()[0]}") from None
    _, head, stats = read_head_file(folder)
    if head is None:
        log.warning("loaded the open_clip model folder %s: the classification head is freshly initialised", folder)
        return None
    try:
        model.head.load_state_dict(head, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{folder / hub.HEAD_FILE} does not fit the model: {str(e).splitlines()[0]}") from None
    return stats


def resolve_pretrained(cfg: ModelCfg | None, pretrained: str, cache_dir: str | None = None) -> str:
    """A local path for ``pretrained``: ``hf-hub:ORG/REPO[/FILE]`` through the hub cache, ``local-dir:PATH``, a
    file or folder as-is; else an open_clip pretrained tag for ``cfg`` (downloaded from the hub)."""
    pretrained = str(pretrained)
    if pretrained.startswith(hub.PREFIX):
        return str(hub.resolve(pretrained, cache_dir))
    if pretrained.startswith("local-dir:"):
        folder = pretrained[len("local-dir:"):]
        if not is_model_folder(folder):
            raise CheckpointError(f"{pretrained}: not a model folder (no {hub.FOLDER_CONFIG} in {folder})")
        return folder
    if os.path.exists(pretrained) or cfg is None or not isinstance(cfg, str):
        return pretrained
    tag_cfg = open_clip.get_pretrained_cfg(cfg, pretrained)
    if not tag_cfg:
        return pretrained
    return open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)


def create_model(cfg: ModelCfg | None = None, pretrained: str | None = None, precision: str = "fp32",
                 device: str = "cpu", cache_dir: str | None = None) -> SuperCLIP:
    """A SuperCLIP model from a config (registered name, JSON path or dict), optionally with weights.

    ``pretrained``: our checkpoint (its config is used when ``cfg`` is None), an official SuperCLIP training
    checkpoint as released, open_clip weights (head freshly initialised; a warning says so), a model folder
    (``superclip export``, or any open_clip hub / ``local-dir:`` folder), ``hf-hub:ORG/REPO[/FILE]``, or an
    open_clip pretrained tag for an open_clip model name. As in open_clip, ``create_model("hf-hub:ORG/REPO")``
    (or ``"local-dir:PATH"``) alone loads config and weights. Statistics: :func:`load_token_stats`.
    """
    return load_model(cfg, pretrained, precision, device, cache_dir)[0]


def load_model(cfg: ModelCfg | None = None, pretrained: str | None = None, precision: str = "fp32",
               device: str = "cpu", cache_dir: str | None = None) -> tuple[SuperCLIP, dict | None, dict[str, Any]]:
    """:func:`create_model`, reading the checkpoint once: (model, its loss statistics or None, ``info`` with
    the local ``path``, and for our training checkpoints ``train_config`` and ``step``)."""
    if pretrained is None and isinstance(cfg, (str, Path)) and (
            str(cfg).startswith((hub.PREFIX, "local-dir:")) or is_model_folder(cfg)):
        cfg, pretrained = None, str(cfg)  # open_clip's way: the name brings config and weights
    ckpt = None
    if pretrained is not None:
        pretrained = resolve_pretrained(cfg, pretrained, cache_dir)
        if is_model_folder(pretrained):
            cfg = folder_config(Path(pretrained)) if cfg is None else cfg
        else:
            ckpt = read_checkpoint(pretrained)
        if cfg is None:
            if checkpoint_kind(ckpt) != "superclip" or not ckpt.get("config"):
                raise ConfigError(f"checkpoint {pretrained} carries no model config: name one (--model)")
            cfg = ckpt["config"]
    if cfg is None:
        raise ConfigError("a model config is needed (a name, a JSON path or a dict)")
    if pretrained is not None:  # the weights come from the checkpoint: a hub text tower is built from its config
        cfg = resolve_model_config(cfg)
        if cfg["text_cfg"].get("hf_model_name"):
            cfg["text_cfg"]["hf_model_pretrained"] = False
    model = build_model(cfg)
    stats = load_into(model, pretrained, ckpt) if pretrained is not None else None
    info = {"path": pretrained, **{k: ckpt.get(k) for k in ("train_config", "step", "world_size") if ckpt}}
    if precision in ("bf16", "fp16"):
        model = model.to(torch.bfloat16 if precision == "bf16" else torch.float16)
    return model.to(device), stats, info


def create_model_and_transforms(cfg: ModelCfg | None = None, pretrained: str | None = None, **kwargs):
    """(model, preprocess_train, preprocess_val), as open_clip's function of the same name."""
    from .model import get_transforms

    model = create_model(cfg, pretrained, **kwargs)
    return (model, *get_transforms(model))
