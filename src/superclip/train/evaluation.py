"""Evaluation during training, on every rank: ImageNet-style zero-shot (``--imagenet-val``), retrieval on
``--val-data`` and compositional accuracy on ``--compositional-val`` (``val/compositional_acc``,
``val/compositional_TYPE_acc``, on --val-data's schedule). Batches are dealt over the ranks and run through the
training model itself (sharded by FSDP2 or not, in its own precision), the embeddings gathered, so the numbers are
a one-process evaluation's. Metric names as open_clip_train logs them (``imagenet-zeroshot-val-top1``) and as
clip_benchmark names retrieval (``val/image_retrieval_recall@1``)."""
from __future__ import annotations

from typing import Dict, List, Optional

import torch

from ..evaluate.data import image_folder
from ..evaluate.features import Encoder
from ..evaluate.tasks import compositional_set, retrieval_file, zero_shot_folder
from ..model import get_tokenizer, get_transforms


@torch.no_grad()
def imagenet_names(folder: str) -> Optional[List[str]]:
    """ImageNet's own class names for a 1000-class tree; None (its folder names) for any other ImageFolder."""
    from open_clip import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES) if len(image_folder(folder)[2]) == 1000 else None


def evaluate_in_training(model, cfg, device, zeroshot: bool, val: bool) -> Dict[str, float]:
    """Every rank calls this with the same arguments (``model``: the training module, FSDP2-sharded or not)."""
    from open_clip import OPENAI_IMAGENET_TEMPLATES

    was_training = model.training
    model.eval()
    _, preprocess = get_transforms(model)
    tokenizer = get_tokenizer(model.config)
    encoder = Encoder(model, device, cfg.precision, split=True)
    out: Dict[str, float] = {}
    try:
        for key, folder in (("imagenet", cfg.imagenet_val), ("imagenetv2", cfg.imagenet_v2)):
            if not (zeroshot and folder):
                continue
            # ImageNet's own class names for a 1000-class tree; any other ImageFolder uses its folder names
            names = imagenet_names(folder)
            m = zero_shot_folder(encoder, preprocess, tokenizer, folder, names,
                                 [t("{c}") for t in OPENAI_IMAGENET_TEMPLATES], cfg.batch_size)
            out[f"{key}-zeroshot-val-top1"] = m["acc1"]
            out[f"{key}-zeroshot-val-top5"] = m["acc5"]
        if val and cfg.val_data:
            m = retrieval_file(encoder, preprocess, tokenizer, cfg.val_data, cfg.csv_img_key, cfg.csv_caption_key,
                               batch_size=cfg.batch_size, separator=cfg.csv_separator,
                               wds_caption_key=cfg.wds_caption_key, max_images=cfg.val_num_samples)
            out.update({f"val/{k}": v for k, v in m.items() if "recall" in k})
        if val and cfg.compositional_val:
            m = compositional_set(encoder, preprocess, tokenizer, cfg.compositional_val, batch_size=cfg.batch_size)
            out.update({f"val/compositional_{k}": v for k, v in m.items() if k.endswith("acc")})
    finally:
        model.train(was_training)
    return out
