"""Embedding images and texts in batches (with a progress bar callback), under no_grad and autocast."""
from __future__ import annotations

import contextlib
from typing import Callable, List, Optional, Sequence

import torch

from .data import load_image


def autocast_for(precision: str, device: torch.device):
    if precision in ("amp", "amp_bf16", "bf16"):
        dtype = torch.bfloat16 if precision != "amp" else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


@torch.no_grad()
def embed_images(model, preprocess: Callable, paths: Sequence[str], batch_size: int = 64, device="cpu",
                 precision: str = "fp32", progress: Optional[Callable[[int], None]] = None,
                 kind: str = "features") -> torch.Tensor:
    """(N, D) normalised image embeddings (``kind='features'``) or (N, V) head logits (``kind='token_logits'``)."""
    device = torch.device(device)
    out: List[torch.Tensor] = []
    for s in range(0, len(paths), batch_size):
        batch = torch.stack([preprocess(load_image(p)) for p in paths[s:s + batch_size]]).to(device)
        with autocast_for(precision, device):
            if kind == "features":
                out.append(model.encode_image(batch, normalize=True).float().cpu())
            else:
                out.append(model.token_logits(batch).float().cpu())
        if progress:
            progress(len(batch))
    return torch.cat(out)


@torch.no_grad()
def embed_texts(model, tokenizer: Callable, texts: Sequence[str], batch_size: int = 256, device="cpu",
                precision: str = "fp32", progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """(N, D) normalised text embeddings."""
    device = torch.device(device)
    out: List[torch.Tensor] = []
    for s in range(0, len(texts), batch_size):
        ids = tokenizer(list(texts[s:s + batch_size])).to(device)
        with autocast_for(precision, device):
            out.append(model.encode_text(ids, normalize=True).float().cpu())
        if progress:
            progress(len(ids))
    return torch.cat(out)
