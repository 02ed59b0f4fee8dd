"""Pieces the train-step benchmarks share (cls_overhead.py, gpu_step.py): a random batch and one λ setting."""
import torch

import superclip
from superclip.config import TrainConfig
from superclip.train.optim import build_optimizer


def random_batch(model, model_name: str, batch_size: int, device: torch.device):
    """(images (B, 3, S, S) ~ N(0, 1), token ids (B, 77) of short distinct captions) on ``device``."""
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    images = torch.randn(batch_size, 3, size, size, device=device)
    words = ("dog", "cat", "car", "tree")
    ids = superclip.get_tokenizer(model_name)([f"a photo of a {words[i % 4]} number {i}" for i in range(batch_size)])
    return images, ids.to(device)


def setting(model, weight: float, device: torch.device):
    """(model, criterion, optimizer) for class-loss weight ``weight``: ``model`` itself, with its head frozen for
    λ = 0 as the trainer does, and the trainer's AdamW."""
    if weight == 0:
        model.head.requires_grad_(False)
    criterion = superclip.SuperCLIPLoss(vocab_size=model.vocab_size, cls_weight=weight).to(device).train()
    return model, criterion, build_optimizer(model, TrainConfig(lr=1e-5))
