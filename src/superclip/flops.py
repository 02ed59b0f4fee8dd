"""Multiply-add counts per image-text pair: vision tower, text tower, classification head.

Counted with ``torch.utils.flop_counter.FlopCounterMode`` on meta tensors (no memory, no compute). The paper's
Table 3 counts MACs of the linear and convolution layers (fvcore's convention, labelled GFLOPs there); attention
score / value matmuls (SDPA) are reported separately so both conventions can be read off.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch.utils.flop_counter import FlopCounterMode

from .model import ModelCfg, build_model

_DENSE_OPS = ("mm", "addmm", "convolution", "_convolution", "linear")


def _count(fn) -> Dict[str, float]:
    """Run ``fn`` under a FlopCounterMode; return {'dense': MACs of linear/conv, 'attention': MACs of the rest}."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    dense = attention = 0
    for op, flops in counter.get_flop_counts()["Global"].items():
        name = getattr(op, "__name__", str(op)).split(".")[0]
        if name in _DENSE_OPS:
            dense += flops
        else:
            attention += flops
    return {"dense": dense / 2, "attention": attention / 2}  # FLOPs -> multiply-adds


def count_macs(cfg: ModelCfg) -> Dict[str, Dict[str, float]]:
    """{'vision'|'text'|'head': {'dense', 'attention'}} multiply-adds for one image and one caption."""
    with torch.device("meta"):
        model = build_model(cfg)
    model.train()  # no inference fast paths: every matmul goes through the counted aten ops
    size = model.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    with torch.device("meta"):
        images = torch.zeros(1, 3, *size)
        ids = torch.zeros(1, model.context_length, dtype=torch.long)
        _, tokens = model.image_features_and_tokens(images)
    return {
        "vision": _count(lambda: model.image_features_and_tokens(images)),
        "text": _count(lambda: model.encode_text(ids)),
        "head": _count(lambda: model.head(tokens)),
    }


def flops_table(cfg: ModelCfg) -> Dict[str, float]:
    """GMACs per image-text pair in the paper's convention, and the head's share of the total."""
    macs = count_macs(cfg)
    out = {f"{part}_gmacs": macs[part]["dense"] / 1e9 for part in ("vision", "text", "head")}
    out["attention_gmacs"] = (macs["vision"]["attention"] + macs["text"]["attention"]) / 1e9
    total = out["vision_gmacs"] + out["text_gmacs"] + out["head_gmacs"]
    out["total_gmacs"] = total
    out["head_share_percent"] = 100 * out["head_gmacs"] / total
    return out
