"""One optimizer step as a function: (model, criterion, optimizer, batch) -> metrics. It neither prints nor saves.

A step is exact at any world size: each process holds B/N of the batch, the contrastive loss gathers features
with their gradients (open_clip's ``gather_with_grad``), the class loss is a mean over the process's rows and
DDP / FSDP2 average the gradients, so the update equals one process's on the whole batch (tested over full
optimizer steps in tests/test_multiprocess.py).
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, Optional

import torch

from .. import distributed
from ..loss import SuperCLIPLoss

_DIFFERENTIABLE_ONCE = ("logit_scale", "logit_bias")
# losses are means over ranks; the other reduced values are sums over ranks
LOSS_KEYS = ("loss", "contrastive_loss", "class_loss")


def _unwrap(model):
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP


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
    gradient in the first micro-batch only (otherwise they would count ``accum_freq`` times; in the others they
    enter with a zero gradient, so DDP sees every parameter used). Gradients are synchronised across processes
    in the last micro-batch only. Random layers (patch dropout) draw differently in the cached and the gradient
    pass. ``cls_ids``: captions for the classification term when they differ from ``ids`` (dual captions).

    Returns the detached losses and the ``logit_scale`` (exp'ed) the step used, as device scalars.
    """
    if criterion.training and criterion.tracks_statistics:
        criterion.update(ids if cls_ids is None else cls_ids)
    want_logits = criterion.needs_token_logits
    text_ids = ids if criterion.needs_text else None  # without a contrastive term the text tower never runs
    if accum_freq == 1:
        with autocast():
            out = model(images, text_ids, return_token_logits=want_logits)
            losses = criterion(out, ids, update=False, class_token_ids=cls_ids)
        _backward(losses["loss"], scaler)
        return _detached(losses, out)

    img_chunks = images.chunk(accum_freq)
    id_chunks = ids.chunk(accum_freq) if text_ids is not None else [None] * len(img_chunks)
    with torch.no_grad(), autocast():
        cached = [model(i, t, return_token_logits=want_logits) for i, t in zip(img_chunks, id_chunks)]
    for j, (img, tid) in enumerate(zip(img_chunks, id_chunks)):
        with distributed.no_sync(model, enabled=j < accum_freq - 1):
            with autocast():
                fresh = model(img, tid, return_token_logits=want_logits)
                merged = {}
                for key, value in fresh.items():
                    if key in _DIFFERENTIABLE_ONCE:
                        merged[key] = value if j == 0 else value.detach() + 0 * value
                    else:
                        merged[key] = torch.cat([c[key] for c in cached[:j]] + [value] +
                                                [c[key] for c in cached[j + 1:]])
                losses = criterion(merged, ids, update=False, class_token_ids=cls_ids)
            _backward(losses["loss"], scaler)
    return _detached(losses, merged)


def _detached(losses: Dict[str, torch.Tensor], out: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {**{k: v.detach() for k, v in losses.items()}, "logit_scale": out["logit_scale"].detach().reshape(-1)[0]}


def grad_norm(parameters) -> torch.Tensor:
    """The global L2 norm of the gradients (DTensor gradients of FSDP2 included), a device scalar."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        norm = torch.nn.utils.get_total_norm(grads)
    else:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    return distributed.full_tensor(norm)


def train_step(model, criterion: SuperCLIPLoss, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               ids: torch.Tensor, accum_freq: int = 1, grad_clip_norm=None, scaler=None,
               autocast=contextlib.nullcontext, cls_ids: Optional[torch.Tensor] = None,
               counters: Optional[Dict[str, float]] = None) -> Dict[str, float]:
    """Gradients, a finiteness check, optional clipping, optimizer step, logit-scale clamp (≤ log 100).

    A step whose loss or gradients are not finite on any process is skipped on every process: no update, the
    IDF statistics put back as they were, the gradients dropped (``nonfinite`` = 1 in the result; with a
    GradScaler, non-finite gradients from a finite loss only lower the scale, as the scaler intends).
    The losses are averaged over processes and ``counters`` (e.g. skipped samples) summed, in one collective
    and one host sync per step. Returns float metrics: the losses, logit_scale, grad_norm, nonfinite, counters.
    """
    optimizer.zero_grad(set_to_none=True)
    saved_stats = criterion.statistics() if criterion.training and criterion.tracks_statistics else None
    losses = compute_gradients(model, criterion, images, ids, accum_freq, autocast, cls_ids, scaler)
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    norm = grad_norm(params).to(losses["loss"].device, torch.float64)
    loss_finite = torch.isfinite(losses["loss"]).to(torch.float64)
    counters = counters or {}
    values = torch.stack([*(losses[k].to(torch.float64) for k in LOSS_KEYS), losses["logit_scale"].double(),
                          norm, 1 - loss_finite, 1 - torch.isfinite(norm).to(torch.float64),
                          *(norm.new_full((), float(v)) for v in counters.values())])  # no host-device copy
    values = distributed.all_reduce_(values, "sum").tolist()
    n = distributed.world_size()
    metrics = {k: values[i] / n for i, k in enumerate(LOSS_KEYS)}
    metrics["logit_scale"], metrics["grad_norm"] = values[3] / n, values[4] / n
    bad_loss, bad_grads = values[5] > 0, values[6] > 0
    metrics.update(zip(counters, values[7:]))
    skip = bad_loss or (bad_grads and scaler is None)
    metrics["nonfinite"] = float(skip)
    if skip or bad_grads:
        optimizer.zero_grad(set_to_none=True)
        if saved_stats is not None:
            criterion.load_statistics(saved_stats)
        if scaler is not None:
            scaler.update()  # lowers the scale after inf / nan gradients
        return metrics
    if grad_clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, grad_clip_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    with torch.no_grad():
        _unwrap(model).logit_scale.clamp_(0, math.log(100))
    return metrics
