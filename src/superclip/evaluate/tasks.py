"""Whole evaluations over data on disk, shared by ``superclip eval`` and evaluation during training."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from ..errors import ConfigError
from .compositional import compositional_metrics
from .data import image_folder, load_image, retrieval_pairs, segmentation_folder
from .hard_negatives import compositional_items
from .dense import dense_probe
from .features import Encoder, embed_images, embed_texts
from .retrieval import retrieval_metrics
from .zero_shot import average_prompts, check_classes, prompts, zero_shot_metrics


def _updater(progress: Optional[Any], total: int) -> Optional[Callable[[int], None]]:
    if progress is None:
        return None
    progress.reset(total=total)
    return progress.update


def zero_shot_classes(root: str, classnames: Optional[List[str]], tokenizer: Callable):
    """(image paths, labels, class names) of a zero-shot ImageFolder tree, names defaulting to the folder names
    (``_`` -> space), checked (:func:`superclip.evaluate.zero_shot.check_classes`) before any image is read."""
    from open_clip import IMAGENET_CLASSNAMES

    paths, labels, folders = image_folder(root)
    names = classnames or [f.replace("_", " ") for f in folders]
    if len(names) != len(folders):
        raise ConfigError(f"{len(names)} class names for {len(folders)} class folders in {root}")
    if list(names) != list(IMAGENET_CLASSNAMES):  # ImageNet's list repeats 'missile' and 'sunglasses' (OpenAI's
        # curation): every published ImageNet zero-shot figure is over it as it is, ties included
        check_classes(tokenizer, names, f"{root}: class names" if classnames else f"{root}: class folders",
                      None if classnames else folders)
    return paths, labels, names


def zero_shot_folder(encoder: Encoder, preprocess: Callable, tokenizer: Callable, root: str,
                     classnames: Optional[List[str]], templates: Sequence[str], batch_size: int = 64,
                     progress: Optional[Any] = None) -> Dict:
    """Zero-shot metrics on an ImageFolder tree; class names default to the folder names (``_`` -> space).

    ``progress``: a tqdm-like bar (``reset(total)``, ``update(n)``), told the number of images once known.
    """
    paths, labels, names = zero_shot_classes(root, classnames, tokenizer)
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
    (:func:`superclip.evaluate.hard_negatives.compositional_items`, its token-tie check with ``tokenizer``
    included); each image and each distinct text is embedded once."""
    items = compositional_items(path, image_root, tokenizer)
    img = embed_images(encoder, preprocess, items.images, batch_size, _updater(progress, len(items.images)))
    texts = list(dict.fromkeys(items.positives + items.negatives))
    row = {t: i for i, t in enumerate(texts)}
    txt = embed_texts(encoder, tokenizer, texts)
    metrics = compositional_metrics(img[torch.tensor(items.image_of)], txt[[row[t] for t in items.positives]],
                                    txt[[row[t] for t in items.negatives]], torch.tensor(items.negative_owner),
                                    items.types)
    counts = {f"{t}_n": items.types.count(t) for t in sorted(set(items.types))}
    return {**metrics, **counts, "data": path, "n_items": len(items.positives), "n_images": len(items.images)}


def mask_geometry(preprocess: Callable) -> Callable:
    """The resizes and crops of an evaluation transform (a torchvision ``Compose``, open_clip's), applied to a mask
    with nearest-neighbour sampling: PIL mask -> (S, S) int64, aligned with the preprocessed image."""
    from PIL import Image
    from torchvision import transforms as T

    steps = []
    for t in getattr(preprocess, "transforms", []):
        if isinstance(t, T.Resize):
            steps.append(T.Resize(t.size, interpolation=T.InterpolationMode.NEAREST, max_size=t.max_size))
        elif isinstance(t, T.CenterCrop):
            steps.append(t)
        elif isinstance(t, (T.ToTensor, T.Normalize)) or not hasattr(t, "size"):
            continue  # colour steps (and open_clip's RGB conversion) leave the geometry alone
        else:
            raise ConfigError(f"the segmentation probe cannot follow the transform {type(t).__name__} onto masks")

    def apply(mask) -> torch.Tensor:
        import numpy as np

        m = Image.fromarray(mask.astype(np.int32), mode="I")
        for step in steps:
            m = step(m)
        return torch.from_numpy(np.asarray(m).astype(np.int64))
    return apply


def _tokens_and_masks(encoder: Encoder, preprocess: Callable, paths: List[str], masks: List, batch_size: int,
                      progress: Optional[Any]):
    """(N, h*w, W) patch tokens and (N, S, S) int64 masks aligned with the preprocessed images."""
    geometry = mask_geometry(preprocess)

    def run(batch):
        images = []
        for path, mask in batch:
            image = load_image(path)
            if image.size != (mask.shape[1], mask.shape[0]):
                raise ConfigError(f"{path}: image is {image.size[0]}x{image.size[1]}, its mask "
                                  f"{mask.shape[1]}x{mask.shape[0]}")
            images.append(preprocess(image))
        return encoder.image_outputs(torch.stack(images), "patch_tokens")

    tokens = encoder.map(list(zip(paths, masks)), batch_size, run, _updater(progress, len(paths)))
    return tokens, torch.stack([geometry(m) for m in masks])


def segmentation_probe(encoder: Encoder, preprocess: Callable, train: str, test: str, n_classes: Optional[int] = None,
                       ignore_index: int = 255, batch_size: int = 64, progress: Optional[Any] = None,
                       seed: int = 0) -> Dict:
    """The dense linear probe (:func:`superclip.evaluate.dense.dense_probe`) fitted on ``train`` and scored on
    ``test``, both ``images/`` + ``annotations/`` folders. ``n_classes`` defaults to the largest class index in
    either split + 1."""
    tr_paths, tr_masks = segmentation_folder(train, n_classes, ignore_index)
    te_paths, te_masks = segmentation_folder(test, n_classes, ignore_index)
    if n_classes is None:
        n_classes = 1 + int(max(m[m != ignore_index].max(initial=-1) for m in tr_masks + te_masks))
        if n_classes < 1:
            raise ConfigError(f"{train}: the masks hold only the ignore index {ignore_index}")
    tr_tokens, tr_masks = _tokens_and_masks(encoder, preprocess, tr_paths, tr_masks, batch_size, progress)
    te_tokens, te_masks = _tokens_and_masks(encoder, preprocess, te_paths, te_masks, batch_size, progress)
    out = dense_probe(tr_tokens, tr_masks, te_tokens, te_masks, n_classes, ignore_index, seed=seed)
    return {**out, "n_classes": n_classes, "ignore_index": ignore_index, "n_train": len(tr_tokens),
            "n_test": len(te_tokens), "data": [train, test]}
