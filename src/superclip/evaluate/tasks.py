"""Whole evaluations over data on disk, shared by ``superclip eval`` and evaluation during training."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from ..errors import ConfigError
from .compositional import compositional_metrics
from .data import compositional_items, image_folder, retrieval_pairs
from .features import Encoder, embed_images, embed_texts
from .retrieval import retrieval_metrics
from .zero_shot import average_prompts, prompts, zero_shot_metrics


def _updater(progress: Optional[Any], total: int) -> Optional[Callable[[int], None]]:
    if progress is None:
        return None
    progress.reset(total=total)
    return progress.update


def zero_shot_folder(encoder: Encoder, preprocess: Callable, tokenizer: Callable, root: str,
                     classnames: Optional[List[str]], templates: Sequence[str], batch_size: int = 64,
                     progress: Optional[Any] = None) -> Dict:
    """Zero-shot metrics on an ImageFolder tree; class names default to the folder names (``_`` -> space).

    ``progress``: a tqdm-like bar (``reset(total)``, ``update(n)``), told the number of images once known.
    """
    paths, labels, folders = image_folder(root)
    names = classnames or [f.replace("_", " ") for f in folders]
    if len(names) != len(folders):
        raise ConfigError(f"{len(names)} class names for {len(folders)} class folders in {root}")
    weights = average_prompts(embed_texts(encoder, tokenizer, prompts(names, templates)), len(names))
    feats = embed_images(encoder, preprocess, paths, batch_size, _updater(progress, len(paths)))
    return {**zero_shot_metrics(feats, weights.cpu(), torch.tensor(labels)), "data": root, "n_images": len(paths),
            "n_classes": len(names)}


def retrieval_file(encoder: Encoder, preprocess: Callable, tokenizer: Callable, path: str,
                   img_key: str = "filepath", caption_key: str = "title", split: str = "test",
                   image_root: Optional[str] = None, batch_size: int = 64, progress: Optional[Any] = None,
                   separator: Optional[str] = None, wds_caption_key: str = "txt",
                   max_images: Optional[int] = None) -> Dict:
    """Retrieval metrics on a CSV/TSV or karpathy-style JSON file (``progress`` as in :func:`zero_shot_folder`);
    ``max_images``: only the first N images and their captions (open_clip's ``--val-num-samples``)."""
    images, captions, owner = retrieval_pairs(path, img_key, caption_key, separator, split, image_root,
                                              wds_caption_key)
    if max_images is not None and max_images < len(images):
        keep = [i for i, o in enumerate(owner) if o < max_images]
        images, captions, owner = images[:max_images], [captions[i] for i in keep], [owner[i] for i in keep]
    img = embed_images(encoder, preprocess, images, batch_size, _updater(progress, len(images)))
    txt = embed_texts(encoder, tokenizer, captions)
    return {**retrieval_metrics(img, txt, torch.tensor(owner)), "data": path, "n_images": len(images),
            "n_captions": len(captions)}


def compositional_set(encoder: Encoder, preprocess: Callable, tokenizer: Callable, path: str,
                      image_root: Optional[str] = None, batch_size: int = 64, progress: Optional[Any] = None) -> Dict:
    """Compositional accuracy per type and overall on a SugarCrepe folder or a JSON/JSONL file
    (:func:`superclip.evaluate.data.compositional_items`); each image and each distinct text is embedded once."""
    items = compositional_items(path, image_root)
    img = embed_images(encoder, preprocess, items.images, batch_size, _updater(progress, len(items.images)))
    texts = list(dict.fromkeys(items.positives + items.negatives))
    row = {t: i for i, t in enumerate(texts)}
    txt = embed_texts(encoder, tokenizer, texts)
    metrics = compositional_metrics(img[torch.tensor(items.image_of)], txt[[row[t] for t in items.positives]],
                                    txt[[row[t] for t in items.negatives]], torch.tensor(items.negative_owner),
                                    items.types)
    counts = {f"{t}_n": items.types.count(t) for t in sorted(set(items.types))}
    return {**metrics, **counts, "data": path, "n_items": len(items.positives), "n_images": len(items.images)}
