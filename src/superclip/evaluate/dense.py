"""Dense linear probe on frozen patch tokens: a linear classifier per patch, its logits upsampled (bilinear) to the
mask, scored by mIoU and pixel accuracy (DINOv2's linear segmentation protocol, on the tokens the SuperCLIP head
reads: the image tower's patch tokens after its final norm).

Where it differs from DINOv2's ``linear`` evaluation: the classifier is fitted by full-batch L-BFGS on the cached
tokens of one centre crop per image (no augmentation, no sliding window, no BatchNorm: the tokens are standardised
with the training split's mean and std instead), its L2 penalty chosen on a held-out fifth of the training images,
and pixels are scored in the crop the model sees (the mask resized and cropped as the image is), not at the
original resolution."""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F

DEFAULT_WEIGHT_DECAYS = (1e-5, 1e-3, 1e-1)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, n_classes: int, ignore_index: int) -> torch.Tensor:
    """(C, C) int64 counts, row = true class, column = predicted; pixels whose target is ``ignore_index`` are
    left out. pred, target: integer tensors of one shape."""
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    return torch.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def segmentation_metrics(confusion: torch.Tensor) -> Dict[str, Optional[float]]:
    """``miou``: the mean over classes of intersection / union, classes with an empty union (neither in the
    masks nor predicted) left out, as mmsegmentation does; ``pixel_acc``: correct / scored pixels;
    ``mean_class_acc``: mean per-class recall over the classes present. With no scored pixel all three are None
    and ``null_reasons`` says so (a mean over nothing is no number; NaN would not be JSON)."""
    c = confusion.double()
    if c.sum() == 0:
        why = "no pixel is scored (every one is the ignore index)"
        return {"miou": None, "pixel_acc": None, "mean_class_acc": None,
                "null_reasons": {k: why for k in ("miou", "pixel_acc", "mean_class_acc")}}
    inter = c.diag()
    union = c.sum(0) + c.sum(1) - inter
    present = c.sum(1) > 0
    iou = inter / union.clamp_min(1)
    return {"miou": iou[union > 0].mean().item(), "pixel_acc": (inter.sum() / c.sum().clamp_min(1)).item(),
            "mean_class_acc": (inter[present] / c.sum(1)[present]).mean().item()}


def _grid(tokens: torch.Tensor) -> int:
    side = math.isqrt(tokens.shape[1])
    if side * side != tokens.shape[1]:
        raise ValueError(f"{tokens.shape[1]} patch tokens do not form a square grid")
    return side


def patch_logits(clf: torch.nn.Linear, tokens: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """tokens (N, h*w, W) standardised -> (N, C, H, W) logits, bilinear from the (h, w) patch grid to ``size``."""
    side = _grid(tokens)
    logits = clf(tokens).transpose(1, 2).reshape(len(tokens), -1, side, side)
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def fit_dense_probe(tokens: torch.Tensor, masks: torch.Tensor, n_classes: int, ignore_index: int,
                    weight_decay: float, max_iter: int = 100, chunk: int = 64) -> torch.nn.Linear:
    """Full-batch L-BFGS on the mean pixel cross-entropy (ignored pixels left out) + ``weight_decay`` x ||W||^2.
    tokens: (N, h*w, W) standardised; masks: (N, H, W) int64. The batch is run ``chunk`` images at a time so the
    upsampled logits never all live at once."""
    clf = torch.nn.Linear(tokens.shape[-1], n_classes)
    torch.nn.init.zeros_(clf.weight)
    torch.nn.init.zeros_(clf.bias)
    opt = torch.optim.LBFGS(clf.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")
    n_valid = max(1, int((masks != ignore_index).sum()))

    def closure():
        opt.zero_grad()
        total = weight_decay * clf.weight.pow(2).sum()
        total.backward()
        total = total.detach()
        for s in range(0, len(tokens), chunk):
            logits = patch_logits(clf, tokens[s:s + chunk], masks.shape[1:])
            loss = F.cross_entropy(logits, masks[s:s + chunk], ignore_index=ignore_index, reduction="sum") / n_valid
            loss.backward()
            total = total + loss.detach()
        return total

    opt.step(closure)
    return clf


@torch.no_grad()
def predict(clf: torch.nn.Linear, tokens: torch.Tensor, size: Sequence[int], chunk: int = 64) -> torch.Tensor:
    """(N, H, W) int64 predicted classes."""
    return torch.cat([patch_logits(clf, tokens[s:s + chunk], size).argmax(1) for s in range(0, len(tokens), chunk)])


def dense_probe(train_tokens: torch.Tensor, train_masks: torch.Tensor, test_tokens: torch.Tensor,
                test_masks: torch.Tensor, n_classes: int, ignore_index: int = 255,
                weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS, val_fraction: float = 0.2, seed: int = 0,
                max_iter: int = 100) -> Dict[str, Optional[float]]:
    """mIoU, pixel accuracy and mean class accuracy on the test split, the chosen ``weight_decay`` and the IoU of
    each class (``iou_per_class``, None for a class with an empty union).

    train_tokens, test_tokens: (N, h*w, W) frozen patch tokens; train_masks, test_masks: (N, H, W) int64 class
    indices in [0, n_classes) or ``ignore_index``. The penalty is the one with the best mIoU on a held-out
    ``val_fraction`` of the training images (ties: the stronger), then refitted on all of them."""
    mean = train_tokens.flatten(0, 1).mean(0)
    std = train_tokens.flatten(0, 1).std(0).clamp_min(1e-6)
    train_tokens, test_tokens = (train_tokens - mean) / std, (test_tokens - mean) / std
    size = test_masks.shape[1:]
    best = weight_decays[0]
    if len(weight_decays) > 1 and len(train_tokens) >= 5:
        perm = torch.randperm(len(train_tokens), generator=torch.Generator().manual_seed(seed))
        n_val = max(1, int(len(train_tokens) * val_fraction))
        val, fit = perm[:n_val], perm[n_val:]
        scores = {}
        for wd in weight_decays:
            clf = fit_dense_probe(train_tokens[fit], train_masks[fit], n_classes, ignore_index, wd, max_iter)
            pred = predict(clf, train_tokens[val], train_masks.shape[1:])
            miou = segmentation_metrics(confusion_matrix(pred, train_masks[val], n_classes, ignore_index))["miou"]
            scores[wd] = -1.0 if miou is None else miou  # held-out images without a scored pixel: a tie
        best = max(weight_decays, key=lambda wd: (scores[wd], wd))
    clf = fit_dense_probe(train_tokens, train_masks, n_classes, ignore_index, best, max_iter)
    conf = confusion_matrix(predict(clf, test_tokens, size), test_masks, n_classes, ignore_index)
    c = conf.double()
    union = c.sum(0) + c.sum(1) - c.diag()
    iou = [(c[k, k] / union[k]).item() if union[k] > 0 else None for k in range(n_classes)]
    return {**segmentation_metrics(conf), "weight_decay": best, "iou_per_class": iou}
