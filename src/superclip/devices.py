"""The one device check of every command (train, eval, embed, classify, tag, index, serve): ``--device`` as typed
-> a ``torch.device`` that exists on this machine, or a one-line :class:`ConfigError` saying what there is.

torch itself answers a device it cannot use with a traceback at the first tensor moved there (``Found no NVIDIA
driver``, ``PyTorch is not linked with support for mps devices``, ``Cannot copy out of meta tensor``), and takes
device types superclip cannot run on (``meta``, ``hip``, ``xla``) without a word.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Tuple

import torch

from .errors import ConfigError

KINDS = "cpu, cuda, cuda:N, mps or xpu[:N]"


def _accelerator(kind: str) -> Tuple[str, bool, Callable[[], int]]:
    """(name in messages, available, device count) of an accelerator type superclip runs on."""
    if kind == "cuda":
        return "CUDA", torch.cuda.is_available(), torch.cuda.device_count
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        return "MPS (Apple GPU)", bool(mps and mps.is_available()), lambda: 1
    xpu = getattr(torch, "xpu", None)
    return "XPU", bool(xpu and xpu.is_available()), (xpu.device_count if xpu else lambda: 0)


def resolve_device(spec: Optional[str], local_rank: Optional[int] = None) -> torch.device:
    """The device ``spec`` names (``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``xpu``, ``xpu:N``; case and surrounding
    spaces ignored), checked against this machine; None or empty: CUDA when available, else the CPU. A bare
    ``cuda`` (or ``xpu``) means this process's own GPU, index ``local_rank`` (default: ``LOCAL_RANK`` as torchrun
    sets it, else 0)."""
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    text = (spec or "").strip().lower()
    if not text:
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {spec}: unknown device (expected {KINDS})") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type not in ("cuda", "mps", "xpu"):
        raise ConfigError(f"--device {spec}: superclip runs on {KINDS}, not on {device.type!r} devices")
    name, available, count = _accelerator(device.type)
    if not available:
        raise ConfigError(f"--device {spec}: {name} is not available on this machine (--device cpu runs on the CPU)")
    if device.type == "mps":
        return device
    if device.index is None:
        device = torch.device(device.type, local_rank)
    n = count()
    if device.index >= n:
        unit = "GPU" if n == 1 else "GPUs"
        rank = f" (a bare {device.type} means local rank {local_rank}'s)" if spec and ":" not in text else ""
        raise ConfigError(f"--device {spec}: this machine has {n} {unit} ({device.type}:0..{device.type}:{n - 1})"
                          f"{rank}")
    return device
