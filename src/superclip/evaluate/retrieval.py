"""Image-text retrieval with clip_benchmark's definitions and metric names.

``image_retrieval_recall@k``: the share of captions whose image (any of them, if several) is among the k
images scored highest for that caption. ``text_retrieval_recall@k``: the share of images with at least one
of their captions among the k captions scored highest for that image.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch


def _hit_at_k(scores: torch.Tensor, positives: torch.Tensor, k: int) -> torch.Tensor:
    """(Q, N) scores and bool positives -> (Q,) bool: a positive among each row's top-k."""
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return positives.gather(1, top).any(dim=1)


def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor, text_to_image: torch.Tensor,
                      ks: Sequence[int] = (1, 5, 10), chunk: int = 4096) -> Dict[str, float]:
    """(I, D) and (T, D) normalised embeddings; ``text_to_image`` (T,) int: the image each caption describes."""
    n_images = image_features.shape[0]
    img, txt = image_features.float(), text_features.float()
    out = {}
    for k in ks:
        hits = []
        for s in range(0, txt.shape[0], chunk):  # captions -> images
            scores = txt[s:s + chunk] @ img.T
            positives = torch.zeros_like(scores, dtype=torch.bool)
            positives[torch.arange(scores.shape[0]), text_to_image[s:s + chunk]] = True
            hits.append(_hit_at_k(scores, positives, k))
        out[f"image_retrieval_recall@{k}"] = torch.cat(hits).float().mean().item()
        hits = []
        for s in range(0, n_images, chunk):  # images -> captions
            scores = img[s:s + chunk] @ txt.T
            positives = text_to_image[None, :] == torch.arange(s, min(s + chunk, n_images))[:, None]
            hits.append(_hit_at_k(scores, positives, k))
        out[f"text_retrieval_recall@{k}"] = torch.cat(hits).float().mean().item()
    return out
