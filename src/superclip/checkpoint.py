"""Checkpoints: ours (save / load, atomic), the official SuperCLIP release, open_clip weights, and export to an
open_clip ``local-dir:`` folder.

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
import tempfile
import time
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import open_clip
import torch

from .errors import CheckpointError, ConfigError
from .model import ModelCfg, SuperCLIP, build_model, openclip_config, resolve_model_config

log = logging.getLogger(__name__)

FORMAT = "superclip"
STAT_KEYS = ("cap_fq", "num_samples")
# official name -> ours, for the classification head
_OFFICIAL_HEAD = {"text_decoder.ln_mlp.": "head.norm.", "text_decoder.text_projection.": "head.fc."}


def versions() -> Dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("superclip", "torch", "open_clip_torch", "timm"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _test_write_delay() -> None:
    """Test-only: ``SUPERCLIP_TEST_WRITE_DELAY`` seconds of sleep before each rename, so that fault-injection
    tests can kill a run while a checkpoint is being written. Unset in real runs."""
    delay = os.environ.get("SUPERCLIP_TEST_WRITE_DELAY")
    if delay:
        time.sleep(float(delay))


_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: os.PathLike, write) -> None:
    """``write(file)`` into a temporary file in the same folder, fsync, then ``os.replace`` onto ``path``: a
    reader (or a resumed run) sees the old file or the whole new one, never a half-written one, also after a
    kill or a power cut. On any failure (a full disk) the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would make checkpoints private to their writer
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _test_write_delay()
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_torch_save(obj: Any, path: os.PathLike) -> None:
    """``torch.save`` through :func:`_atomic_write`."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: os.PathLike) -> None:
    _atomic_write(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: os.PathLike, model: SuperCLIP, criterion: Optional[torch.nn.Module] = None,
                    model_state: Optional[Dict[str, torch.Tensor]] = None, **state: Any) -> None:
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
    atomic_write_text(json.dumps(meta, indent=2, default=str) + "\n", Path(str(path) + ".json"))


def read_checkpoint(path: os.PathLike) -> Dict[str, Any]:
    """Load a checkpoint file to CPU (``weights_only``); a clear error if missing or unreadable."""
    path = Path(path)
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


def _strip_module(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def checkpoint_kind(ckpt: Dict[str, Any]) -> str:
    """``superclip``, ``official`` (released SuperCLIP training checkpoint) or ``open_clip`` (CLIP weights)."""
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        return "superclip"
    sd = _strip_module(ckpt.get("state_dict", ckpt))
    if any(k.startswith("text_decoder.") for k in sd) or "cap_fq" in sd:
        return "official"
    return "open_clip"


def official_to_superclip(sd: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
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


def superclip_to_official(model: SuperCLIP, criterion: Optional[torch.nn.Module] = None) -> Dict[str, torch.Tensor]:
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


def _load_strict(model: torch.nn.Module, sd: Dict[str, torch.Tensor], source: str) -> None:
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


def _token_stats(ckpt: Dict[str, Any]) -> Optional[Dict[str, torch.Tensor]]:
    """The loss statistics {cap_fq (1, V), num_samples (1, 1)} a loaded checkpoint holds, or None."""
    kind = checkpoint_kind(ckpt)
    if kind == "superclip":
        loss_sd = ckpt.get("loss") or {}
        return {k: loss_sd[k] for k in STAT_KEYS if k in loss_sd} or None
    if kind == "official":
        return official_to_superclip(ckpt.get("state_dict", ckpt))[1] or None
    return None


def load_into(model: SuperCLIP, path: os.PathLike, ckpt: Optional[Dict[str, Any]] = None) -> Optional[Dict]:
    """Load weights from ``path`` (any supported kind) into ``model``; return loss statistics if it has any."""
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


def load_token_stats(path: os.PathLike) -> Optional[Dict[str, torch.Tensor]]:
    """The loss statistics {cap_fq (1, V), num_samples (1, 1)} stored in a checkpoint, or None.

    ``criterion.load_state_dict(load_token_stats(path))`` continues an official or superclip run's IDF.
    """
    return _token_stats(read_checkpoint(path))


def resolve_pretrained(cfg: Optional[ModelCfg], pretrained: str) -> str:
    """A file path as-is; else an open_clip pretrained tag for ``cfg`` (downloaded from the hub)."""
    if os.path.exists(pretrained) or cfg is None or not isinstance(cfg, str):
        return pretrained
    tag_cfg = open_clip.get_pretrained_cfg(cfg, pretrained)
    if not tag_cfg:
        return pretrained
    return open_clip.download_pretrained(tag_cfg)


def create_model(cfg: Optional[ModelCfg] = None, pretrained: Optional[str] = None, precision: str = "fp32",
                 device: str = "cpu") -> SuperCLIP:
    """A SuperCLIP model from a config (registered name, JSON path or dict), optionally with weights.

    ``pretrained``: our checkpoint (its config is used when ``cfg`` is None), an official SuperCLIP training
    checkpoint as released, open_clip weights (head freshly initialised; a warning says so), or an open_clip
    pretrained tag for an open_clip model name. Statistics in the checkpoint: :func:`load_token_stats`.
    """
    ckpt = None
    if pretrained is not None:
        pretrained = resolve_pretrained(cfg, pretrained)
        ckpt = read_checkpoint(pretrained)
        if cfg is None:
            if checkpoint_kind(ckpt) != "superclip" or not ckpt.get("config"):
                raise ConfigError(f"checkpoint {pretrained} carries no model config: name one (--model)")
            cfg = ckpt["config"]
    if cfg is None:
        raise ConfigError("a model config is needed (a name, a JSON path or a dict)")
    if ckpt is not None:  # the weights come from the checkpoint: a hub text tower is built from its config only
        cfg = resolve_model_config(cfg)
        if cfg["text_cfg"].get("hf_model_name"):
            cfg["text_cfg"]["hf_model_pretrained"] = False
    model = build_model(cfg)
    if ckpt is not None:
        load_into(model, pretrained, ckpt)
    if precision in ("bf16", "fp16"):
        model = model.to(torch.bfloat16 if precision == "bf16" else torch.float16)
    return model.to(device)


def create_model_and_transforms(cfg: Optional[ModelCfg] = None, pretrained: Optional[str] = None, **kwargs):
    """(model, preprocess_train, preprocess_val), as open_clip's function of the same name."""
    from .model import get_transforms

    model = create_model(cfg, pretrained, **kwargs)
    return (model, *get_transforms(model))


def export_openclip(model: SuperCLIP, out_dir: os.PathLike) -> Path:
    """Write an open_clip ``local-dir:`` folder (config + weights, head dropped).

    ``open_clip.create_model_and_transforms('local-dir:' + out_dir)`` then gives the same embeddings.
    """
    if model.config is None:
        raise ConfigError("model has no config to export")
    out = Path(out_dir)
    config = {"model_cfg": openclip_config(model.config),
              "preprocess_cfg": open_clip.get_model_preprocess_cfg(model.clip)}
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(model.clip.state_dict(), out / "open_clip_pytorch_model.bin")
        atomic_write_text(json.dumps(config, indent=2) + "\n", out / "open_clip_config.json")
    except OSError as e:
        raise ConfigError(f"cannot write to {out}: {e.strerror or e}") from None
    return out
