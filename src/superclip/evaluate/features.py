"""Embedding images and texts in batches (with a progress bar callback), under no_grad and autocast, on one
process or dealt over the ranks of a process group.

Over ranks (``Encoder(split=True)``), batch ``i`` of the list goes to rank ``i % world_size``: every rank runs
the same number of forward passes (a rank without a batch in the last round runs a stand-in and drops it, so
FSDP's collectives stay in step), the outputs are gathered on the device, and each batch holds exactly the
items it holds on one process, so the result is one process's result.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

from .. import distributed
from .data import load_image


def autocast_for(precision: str, device: torch.device):
    if precision in ("amp", "amp_bf16", "bf16", "pure_bf16"):
        dtype = torch.bfloat16 if precision != "amp" else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


@dataclass
class Encoder:
    """Runs a SuperCLIP model for evaluation. Calls go through the module itself (``model(images, None)``),
    so a sharded FSDP2 model gathers its parameters as in training; images are cast to the weights' dtype
    (pure bf16 / fp16 models). ``split``: deal batches over the process group's ranks."""

    model: torch.nn.Module
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    split: bool = False

    def __post_init__(self):
        self.device = torch.device(self.device)
        self.dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), torch.float32)

    def image_outputs(self, images: torch.Tensor, kind: str = "features") -> torch.Tensor:
        """(B, 3, H, W) -> (B, D) normalised embeddings (``features``), (B, V) head logits (``token_logits``) or
        (B, N, W) patch tokens after the tower's final norm, what the head reads (``patch_tokens``)."""
        images = images.to(self.device, dtype=self.dtype)
        if kind == "patch_tokens":
            with autocast_for(self.precision, self.device):
                return self.model.image_features_and_tokens(images)[1].float()
        with autocast_for(self.precision, self.device):
            out = self.model(images, None, return_token_logits=kind == "token_logits")
        return out["image_features" if kind == "features" else "token_logits"].float()

    def text_features(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) int64 -> (B, D) normalised embeddings."""
        with autocast_for(self.precision, self.device):
            return self.model(None, ids.to(self.device))["text_features"].float()

    @torch.no_grad()
    def map(self, items: Sequence, batch_size: int, run: Callable[[Sequence], torch.Tensor],
            progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
        """``run`` over consecutive batches of ``items``, outputs concatenated in order, on the CPU."""
        batches = [items[s:s + batch_size] for s in range(0, len(items), batch_size)]
        world = distributed.world_size() if self.split else 1
        if world == 1:
            out = []
            for batch in batches:
                out.append(run(batch).cpu())
                if progress:
                    progress(len(batch))
            return torch.cat(out)
        rank = distributed.rank()
        rounds = -(-len(batches) // world)
        mine: List[torch.Tensor] = []
        for k in range(rounds):
            i = k * world + rank
            y = run(batches[i] if i < len(batches) else batches[0])
            mine.append(torch.cat([y, y.new_zeros(batch_size - len(y), *y.shape[1:])]))  # equal sizes to gather
            if progress:
                progress(sum(len(b) for b in batches[k * world:(k + 1) * world]))
        gathered = distributed.all_gather_rows(torch.cat(mine))  # rank-major: (world, rounds, batch, ...)
        gathered = gathered.reshape(world, rounds, batch_size, -1).transpose(0, 1)
        gathered = gathered.reshape(world * rounds, batch_size, -1)
        return torch.cat([gathered[i, :len(b)] for i, b in enumerate(batches)]).cpu()


def embed_images(encoder: Encoder, preprocess: Callable, paths: Sequence[str], batch_size: int = 64,
                 progress: Optional[Callable[[int], None]] = None, kind: str = "features") -> torch.Tensor:
    """(N, D) normalised image embeddings (``kind='features'``) or (N, V) head logits (``kind='token_logits'``)."""
    return encoder.map(paths, batch_size,
                       lambda batch: encoder.image_outputs(torch.stack([preprocess(load_image(p)) for p in batch]),
                                                           kind), progress)


def embed_texts(encoder: Encoder, tokenizer: Callable, texts: Sequence[str], batch_size: int = 256,
                progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """(N, D) normalised text embeddings."""
    return encoder.map(list(texts), batch_size, lambda batch: encoder.text_features(tokenizer(list(batch))), progress)
