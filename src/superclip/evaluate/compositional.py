"""Compositional hard negatives (SugarCrepe's metric): an item is an image, its caption and one or more negative
captions that change one detail (an attribute, an object, a relation, a count); the item is won when the
caption's similarity to the image is strictly above every negative's. A tie is not a win, as in SugarCrepe's
``main_eval.py`` (``pos_score > neg_score``); clip_benchmark's ``sugar_crepe`` task takes the argmax over
[caption, negatives], which picks the caption on a tie, so the two differ only on exact ties."""
from __future__ import annotations

from typing import Dict, Sequence

import torch


def item_wins(image_features: torch.Tensor, positive_features: torch.Tensor, negative_features: torch.Tensor,
              negative_owner: torch.Tensor) -> torch.Tensor:
    """(N,) bool: item i's caption scores strictly above each of its negatives.

    image_features, positive_features: (N, D) normalised, row i = item i (an image may stand in several rows);
    negative_features: (M, D) normalised; negative_owner: (M,) int64, the item of each negative (every item has
    at least one).
    """
    positive = (image_features * positive_features).sum(-1)
    negative = (image_features[negative_owner] * negative_features).sum(-1)
    best = torch.full_like(positive, float("-inf")).scatter_reduce(0, negative_owner, negative, "amax")
    return positive > best


def compositional_metrics(image_features: torch.Tensor, positive_features: torch.Tensor,
                          negative_features: torch.Tensor, negative_owner: torch.Tensor,
                          types: Sequence[str]) -> Dict[str, float]:
    """``{TYPE}_acc`` per type (share of its items won), ``acc`` over all items and ``mean_type_acc`` (the mean of
    the types' accuracies, the figure SugarCrepe's tables average). Shapes as in :func:`item_wins`; ``types``: N
    names, one per item."""
    wins = item_wins(image_features, positive_features, negative_features, negative_owner).double()
    out: Dict[str, float] = {}
    for name in sorted(set(types)):
        rows = torch.tensor([t == name for t in types])
        out[f"{name}_acc"] = wins[rows].mean().item()
    out["acc"] = wins.mean().item()
    names = sorted(set(types))
    out["mean_type_acc"] = sum(out[f"{t}_acc"] for t in names) / len(names)
    return out
