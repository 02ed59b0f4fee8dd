"""The embedding job: one part in, its embeddings, head tags and metadata out (written by parts.py).

Images are decoded through :func:`superclip.data.images.decode_image` in data-loader workers; one forward pass of
the image tower gives both the L2-normalised embedding (B, D) and the head's token logits (B, V), from which each
image keeps its ``top_k`` whole-word tags with their probabilities (:func:`superclip.evaluate.tags.top_tags`).
An image that cannot be read (any error) is skipped and listed with its error; it never stops the job.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.images import decode_image
from ..evaluate.features import autocast_for
from ..evaluate.tags import TagTable, excluded_token_ids

log = logging.getLogger(__name__)


class _Items(Dataset):
    """Items of one part: (position, pixels or None, (image_path, source, shard_index, size, mtime, sha256),
    error or None). ``read(i)`` gives item i's encoded bytes and its metadata before hashing."""

    def __init__(self, n: int, read: Callable[[int], Tuple[bytes, tuple]], preprocess: Callable):
        self.n, self.read, self.preprocess = n, read, preprocess

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        meta = None
        try:
            data, meta = self.read(i)
            meta = (*meta, hashlib.sha256(data).hexdigest())
            return i, self.preprocess(decode_image(data)), meta, None
        except Exception as e:  # noqa: BLE001 - any unreadable image is skipped and listed, never a crash
            return i, None, meta, f"{type(e).__name__}: {e}".replace("\n", " ").replace("\t", " ")


def _collate(batch):
    return batch


def _file_reader(paths: List[str]):
    def read(i: int):
        path = paths[i]
        st = os.stat(path)
        with open(path, "rb") as f:
            data = f.read()
        return data, (path, "", -1, st.st_size, st.st_mtime)
    return read


def _shard_items(url: str) -> Tuple[List, List[Tuple[str, str]]]:
    """(samples with an image: (path, shard index, bytes)), (skipped: (path, error))) of one shard."""
    from ..data.webdataset import IMAGE_EXTS, Shard, ShardError

    items, skipped = [], []
    with Shard(url) as shard:
        for k in range(len(shard)):
            try:
                sample = shard[k]
            except ShardError as e:
                skipped.append((f"{url}#{k}", str(e)))
                continue
            key = sample["__key__"].decode("utf-8", "replace")
            image = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
            if image is None:
                skipped.append((f"{url}#{key}", "no image member"))
            else:
                items.append((f"{url}#{key}", k, image))
    return items, skipped


def _image_size(preprocess) -> Tuple[int, int]:
    """(H, W) the preprocessing produces, read off a blank image."""
    from PIL import Image

    return tuple(preprocess(Image.new("RGB", (8, 8))).shape[1:])


@dataclass
class PartResult:
    embeddings: np.ndarray  # (n, D) in the index's dtype, L2-normalised
    columns: Dict[str, list]  # image_path, source, shard_index, size, mtime, sha256, tags, tag_probs: n values each
    skipped: List[Tuple[str, str]]  # (path, error) of every unreadable image


class Embedder:
    """A loaded model turned into a part embedder.

    Args:
        model: a SuperCLIP model in eval mode on ``device``.
        token_weights: (V,) IDF weights of the checkpoint's statistics, or None: tokens of weight 0 are never tags.
        dtype: ``float16`` or ``float32``, how embeddings are stored.
    """

    def __init__(self, model, preprocess, tokenizer, device, precision: str = "fp32", top_k: int = 5,
                 dtype: str = "float16", batch_size: int = 64, workers: int = 2,
                 token_weights: Optional[torch.Tensor] = None):
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.device, self.precision, self.top_k = torch.device(device), precision, top_k
        self.dtype, self.batch_size, self.workers = np.dtype(dtype), batch_size, workers
        self.exclude = excluded_token_ids(tokenizer, token_weights)
        self.tag_table = TagTable(tokenizer, top_k, self.exclude)
        self.param_dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        self.dim = int(self.forward(torch.zeros(1, 3, *_image_size(preprocess)))[0].shape[1])

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> Tuple[torch.Tensor, List[List[Tuple[str, float]]]]:
        """(B, 3, H, W) -> ((B, D) float32 normalised embeddings, B lists of (tag, probability))."""
        with autocast_for(self.precision, self.device):
            out = self.model(pixels.to(self.device, dtype=self.param_dtype), None, return_token_logits=True)
        return out["image_features"].float().cpu(), self.tags(out["token_logits"].float().cpu())

    def tags(self, logits: torch.Tensor) -> List[List[Tuple[str, float]]]:
        """(B, V) head logits -> each row's ``top_k`` (word, probability), as
        :func:`superclip.evaluate.tags.top_tags` gives them (batched by :class:`~superclip.evaluate.tags.TagTable`)."""
        return self.tag_table(logits)

    def run(self, plan: Dict, progress: Optional[Callable[[int], None]] = None) -> PartResult:
        """Embed the images of one part plan (``{"files": [...]}`` or ``{"shard": url}``)."""
        skipped: List[Tuple[str, str]] = []
        if "shard" in plan:
            samples, skipped = _shard_items(plan["shard"])
            url = plan["shard"]

            def read(i):
                path, k, data = samples[i]
                return data, (path, url, k, len(data), 0.0)
            items = _Items(len(samples), read, self.preprocess)
        else:
            items = _Items(len(plan["files"]), _file_reader(plan["files"]), self.preprocess)
        loader = DataLoader(items, batch_size=self.batch_size, num_workers=self.workers, collate_fn=_collate,
                            persistent_workers=False)
        names = ("image_path", "source", "shard_index", "size", "mtime", "sha256")
        columns: Dict[str, list] = {k: [] for k in (*names, "tags", "tag_probs")}
        vectors = []
        for batch in loader:
            good = [b for b in batch if b[3] is None]
            for pos, _, meta, error in batch:
                if error is not None:
                    path = meta[0] if meta else (plan["files"][pos] if "files" in plan else f"{plan['shard']}#{pos}")
                    skipped.append((path, error))
            if good:
                feats, tags = self.forward(torch.stack([b[1] for b in good]))
                vectors.append(feats)
                for (_, _, meta, _), t in zip(good, tags):
                    for k, v in zip(names, meta):
                        columns[k].append(v)
                    columns["tags"].append([w for w, _ in t])
                    columns["tag_probs"].append([float(p) for _, p in t])
            if progress:
                progress(len(batch))
        emb = torch.cat(vectors).numpy() if vectors else np.zeros((0, self.dim), dtype=np.float32)
        return PartResult(emb.astype(self.dtype), columns, skipped)


def load_for_search(model: Optional[str], pretrained: Optional[str], device: str = "cpu", precision: str = "fp32",
                    cache_dir: Optional[str] = None):
    """(model in eval mode, val preprocess, tokenizer, (V,) IDF token weights or None) for indexing and serving."""
    from ..loss import idf_weights
    from ..model import get_tokenizer, get_transforms
    from ..weights import load_model

    net, stats, info = load_model(model, pretrained=pretrained, device=device, cache_dir=cache_dir)
    net.eval()
    weights = None
    if stats and stats["num_samples"].item() > 0:
        weights = idf_weights(stats["cap_fq"], stats["num_samples"], 1 << 30)
    return net, get_transforms(net)[1], get_tokenizer(net.config), weights, info
