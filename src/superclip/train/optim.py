"""AdamW with the CLIP recipe's parameter groups, and a warmup + cosine (or constant) schedule."""
from __future__ import annotations

import math

import torch


def param_groups(model: torch.nn.Module, weight_decay: float):
    """Weight decay on tensors of rank >= 2 only (open_clip_train's rule: not on biases, norms, logit scale)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2:  # biases, norm weights, logit scale / bias
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    # The fused kernel (one pass over parameter, gradient and both moments) on CPU as on GPU: on the CPU it
    # updates the head's 49408 x 768 weight ~5x faster than the multi-tensor (foreach) path, ~6x faster than
    # the default per-tensor loop open_clip_train gets.
    return torch.optim.AdamW(param_groups(model, cfg.wd), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             fused=True)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, total_steps: int):
    """Linear warmup over ``cfg.warmup`` steps, then cosine to 0 at ``total_steps`` (or constant)."""

    def factor(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        if cfg.lr_scheduler == "const":
            return 1.0
        progress = (step - cfg.warmup) / max(1, total_steps - cfg.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
