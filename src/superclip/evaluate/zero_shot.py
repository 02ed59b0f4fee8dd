"""Zero-shot classification metrics with clip_benchmark's names: acc1, acc5, mean_per_class_recall."""
from __future__ import annotations

from typing import Callable, Dict, Sequence

import torch
import torch.nn.functional as F


@torch.no_grad()
def classifier_weights(encode_text: Callable, tokenizer: Callable, classnames: Sequence[str],
                       templates: Sequence[str], device="cpu") -> torch.Tensor:
    """(C, D) class embeddings: each class's prompts (``template.format(c=name)``) embedded, normalised,
    averaged and normalised again (the CLIP recipe)."""
    rows = []
    for name in classnames:
        ids = tokenizer([t.format(c=name) for t in templates]).to(device)
        emb = F.normalize(encode_text(ids), dim=-1).mean(dim=0)
        rows.append(F.normalize(emb, dim=-1))
    return torch.stack(rows)


def zero_shot_metrics(image_features: torch.Tensor, class_weights: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
    """Metrics from (N, D) normalised image embeddings, (C, D) class embeddings and (N,) int labels.

    acc5 with fewer than 5 classes counts the top-C predictions, so it is 1.0 (clip_benchmark's definition
    takes top-min(5, C) too).
    """
    logits = image_features @ class_weights.T
    k = min(5, class_weights.shape[0])
    topk = logits.topk(k, dim=1).indices
    correct = topk == labels[:, None]
    pred = topk[:, 0]
    recalls = [(pred[labels == c] == c).float().mean().item() for c in labels.unique().tolist()]
    return {"acc1": correct[:, 0].float().mean().item(), "acc5": correct.any(dim=1).float().mean().item(),
            "mean_per_class_recall": sum(recalls) / len(recalls)}
