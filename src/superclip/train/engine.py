"""One optimizer step as a function: (model, criterion, optimizer, batch) -> metrics. It neither prints nor saves."""
from __future__ import annotations

import contextlib
import math
from typing import Dict, Optional

import torch

from .. import distributed
from ..loss import SuperCLIPLoss

_DIFFERENTIABLE_ONCE = ("logit_scale", "logit_bias")


def _unwrap(model):
    return getattr(model, "module", model)


def _backward(loss: torch.Tensor, scaler) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def compute_gradients(model, criterion: SuperCLIPLoss, images: torch.Tensor, ids: torch.Tensor,
                      accum_freq: int = 1, autocast=contextlib.nullcontext,
                      cls_ids: Optional[torch.Tensor] = None, scaler=None) -> Dict[str, torch.Tensor]:
    """Backward of the step's loss over the whole batch (B_local, ...), split into ``accum_freq`` micro-batches.

    The statistics are updated once, with every caption of the step. With accumulation, as open_clip does,
    each micro-batch's outputs are first computed without gradient and cached; each micro-batch is then run
    again with gradient and the loss is taken over the whole step's outputs, so the contrastive loss sees the
    full batch and the summed gradients equal those of one pass over it. ``logit_scale`` / ``logit_bias`` carry
    gradient in the first micro-batch only (otherwise they would count ``accum_freq`` times). Random layers
    (patch dropout) draw differently in the cached and the gradient pass. ``cls_ids``: captions for the
    classification term when they differ from ``ids`` (dual captions).
    """
    if criterion.training and criterion.tracks_statistics:
        criterion.update(ids if cls_ids is None else cls_ids)
    want_logits = criterion.needs_token_logits
    if accum_freq == 1:
        with autocast():
            out = model(images, ids, return_token_logits=want_logits)
            losses = criterion(out, ids, update=False, class_token_ids=cls_ids)
        _backward(losses["loss"], scaler)
        return {k: v.detach() for k, v in losses.items()}

    img_chunks, id_chunks = images.chunk(accum_freq), ids.chunk(accum_freq)
    with torch.no_grad(), autocast():
        cached = [model(i, t, return_token_logits=want_logits) for i, t in zip(img_chunks, id_chunks)]
    for j, (img, tid) in enumerate(zip(img_chunks, id_chunks)):
        sync = contextlib.nullcontext() if j == accum_freq - 1 or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast():
                fresh = model(img, tid, return_token_logits=want_logits)
                merged = {}
                for key, value in fresh.items():
                    if key in _DIFFERENTIABLE_ONCE:
                        merged[key] = value if j == 0 else value.detach()
                    else:
                        merged[key] = torch.cat([c[key] for c in cached[:j]] + [value] +
                                                [c[key] for c in cached[j + 1:]])
                losses = criterion(merged, ids, update=False, class_token_ids=cls_ids)
            _backward(losses["loss"], scaler)
    return {k: v.detach() for k, v in losses.items()}


def train_step(model, criterion: SuperCLIPLoss, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               ids: torch.Tensor, accum_freq: int = 1, grad_clip_norm=None, scaler=None,
               autocast=contextlib.nullcontext, cls_ids: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """Gradients, optional clipping, optimizer step, logit-scale clamp (≤ log 100). Returns float metrics."""
    optimizer.zero_grad(set_to_none=True)
    losses = compute_gradients(model, criterion, images, ids, accum_freq, autocast, cls_ids, scaler)
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    core = _unwrap(model)
    with torch.no_grad():
        core.logit_scale.clamp_(0, math.log(100))
    metrics = {k: v.item() for k, v in losses.items()}
    metrics["logit_scale"] = distributed.full_tensor(core.logit_scale.detach()).exp().item()
    return metrics
