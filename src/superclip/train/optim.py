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


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, total_steps: int, steps_per_epoch: int = 1):
    """Linear warmup over ``cfg.warmup`` steps, then cosine to 0 at ``total_steps``, constant, or constant then a
    cooldown over the last ``cfg.epochs_cooldown`` epochs to ``cfg.lr_cooldown_end`` (``(1 - t) ** power``, t
    from 0 to 1). ``--skip-scheduler``: ``cfg.lr`` throughout."""
    cooldown = (cfg.epochs_cooldown or 0) * steps_per_epoch

    def factor(step: int) -> float:
        if cfg.skip_scheduler:
            return 1.0
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        if cfg.lr_scheduler == "const":
            return 1.0
        if cfg.lr_scheduler == "const-cooldown":
            start = total_steps - cooldown
            if step < start:
                return 1.0
            t = min(1.0, (step - start) / max(1, cooldown))
            end = cfg.lr_cooldown_end / cfg.lr
            return end + (1 - end) * (1 - t) ** cfg.lr_cooldown_power
        progress = (step - cfg.warmup) / max(1, total_steps - cfg.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
