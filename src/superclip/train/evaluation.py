"""Evaluation during training (rank 0): ImageNet-style zero-shot (``--imagenet-val``) and retrieval on
``--val-data``; metric names as open_clip_train logs them (``imagenet-zeroshot-val-top1``) and as
clip_benchmark names retrieval (``val/image_retrieval_recall@1``)."""
from __future__ import annotations

from typing import Dict

import torch

from ..evaluate.data import image_folder
from ..evaluate.tasks import retrieval_file, zero_shot_folder
from ..model import get_tokenizer, get_transforms


@torch.no_grad()
def evaluate_in_training(model, cfg, device, zeroshot: bool, val: bool) -> Dict[str, float]:
    from open_clip import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    was_training = model.training
    model.eval()
    _, preprocess = get_transforms(model)
    tokenizer = get_tokenizer(model.config)
    out: Dict[str, float] = {}
    try:
        if zeroshot and cfg.imagenet_val:
            # ImageNet's own class names for a 1000-class tree; any other ImageFolder uses its folder names
            names = list(IMAGENET_CLASSNAMES) if len(image_folder(cfg.imagenet_val)[2]) == 1000 else None
            m = zero_shot_folder(model, preprocess, tokenizer, cfg.imagenet_val, names,
                                 [t("{c}") for t in OPENAI_IMAGENET_TEMPLATES], cfg.batch_size, device)
            out["imagenet-zeroshot-val-top1"] = m["acc1"]
            out["imagenet-zeroshot-val-top5"] = m["acc5"]
        if val and cfg.val_data:
            m = retrieval_file(model, preprocess, tokenizer, cfg.val_data, cfg.csv_img_key, cfg.csv_caption_key,
                               batch_size=cfg.batch_size, device=device)
            out.update({f"val/{k}": v for k, v in m.items() if "recall" in k})
    finally:
        model.train(was_training)
    return out
