"""Linear probe: multinomial logistic regression on frozen image features, its L2 penalty chosen on a held-out
part of the training split, then refitted on the whole training split."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from .zero_shot import classification_metrics

DEFAULT_WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decay: float,
                 max_iter: int = 200) -> torch.nn.Linear:
    """Full-batch L-BFGS on the mean cross-entropy + ``weight_decay`` x ||W||^2 (bias not penalised)."""
    clf = torch.nn.Linear(x.shape[1], n_classes, dtype=torch.float64)
    torch.nn.init.zeros_(clf.weight)
    torch.nn.init.zeros_(clf.bias)
    opt = torch.optim.LBFGS(clf.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")
    x = x.double()

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(clf(x), y) + weight_decay * clf.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return clf


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS, val_fraction: float = 0.2,
                 seed: int = 0) -> Dict[str, Optional[float]]:
    """acc1 / acc5 / mean_per_class_recall on the test split, plus the chosen ``weight_decay``.

    Features are standardised with the training split's mean and std.
    """
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    perm = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(len(train_x) * val_fraction))
    val_idx, fit_idx = perm[:n_val], perm[n_val:]
    scores = {}
    for wd in weight_decays:
        clf = fit_logistic(train_x[fit_idx], train_y[fit_idx], n_classes, wd)
        with torch.no_grad():
            scores[wd] = (clf(train_x[val_idx].double()).argmax(1) == train_y[val_idx]).float().mean().item()
    best = max(weight_decays, key=lambda wd: (scores[wd], wd))  # ties: the stronger penalty
    clf = fit_logistic(train_x, train_y, n_classes, best)
    with torch.no_grad():
        out = classification_metrics(clf(test_x.double()), test_y)
    out["weight_decay"] = best
    return out
