"""The embedding job: one part in, its embeddings, head tags and metadata out (written by parts.py).

Images are decoded through :func:`superclip.data.images.decode_image` in data-loader workers; one forward pass of
the image tower gives both the L2-normalised embedding (B, D) and the head's token logits (B, V), from which each
image keeps its ``top_k`` whole-word tags with their probabilities: the words it raises most above the head's mean
over the part (:class:`superclip.evaluate.tags.TagTable`), no function word.
An image that cannot be read (any error) is skipped and listed with its error; it never stops the job.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.images import decode_image
from ..errors import ConfigError
from ..evaluate.features import autocast_for
from ..evaluate.tags import TagTable, excluded_token_ids
from .names import display, raw_bytes
from .sources import checkpoint_hash

log = logging.getLogger(__name__)


THUMB_QUALITY = 85


def thumbnail(image, size: int) -> bytes:
    """A JPEG of ``image`` (RGB) fitting ``size`` x ``size`` (never enlarged); the same bytes for the same image."""
    import io

    from PIL import Image

    small = image.copy()
    small.thumbnail((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=THUMB_QUALITY)
    return buf.getvalue()


class _Items(Dataset):
    """Items of one part: (position, pixels or None, (image_path, source, shard_index, size, mtime, sha256),
    error or None, thumbnail JPEG or None). ``read(i)`` gives item i's encoded bytes and its metadata before
    hashing."""

    def __init__(self, n: int, read: Callable[[int], Tuple[bytes, tuple]], preprocess: Callable, thumb_size: int = 0):
        self.n, self.read, self.preprocess, self.thumb_size = n, read, preprocess, thumb_size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        meta = None
        try:
            data, meta = self.read(i)
            meta = (*meta, hashlib.sha256(data).hexdigest())
            image = decode_image(data)
            thumb = thumbnail(image, self.thumb_size) if self.thumb_size else None
            return i, self.preprocess(image), meta, None, thumb
        except Exception as e:  # noqa: BLE001 - any unreadable image is skipped and listed, never a crash
            return i, None, meta, f"{type(e).__name__}: {e}".replace("\n", " ").replace("\t", " "), None


def _collate(batch):
    return batch


def read_regular_file(path: str) -> Tuple[bytes, os.stat_result]:
    """(bytes, stat) of the regular file ``path``, read from one open file: a symbolic link (as the last part of the
    path) is refused, and so is anything that is not a regular file (a FIFO would block a reader forever)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError(e.errno, "it is a symbolic link (not followed)") from None
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return f.read(), st


def _file_reader(paths: List[str]):
    def read(i: int):
        path = paths[i]
        data, st = read_regular_file(path)
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
    columns: Dict[str, list]  # image_path (+ image_path_bytes), source, shard_index, size, mtime, sha256, tags,
    # tag_probs, thumb_offset, thumb_size: n values each
    skipped: List[Tuple[str, str]]  # (path, error) of every unreadable image
    thumbs: bytes = b""  # the rows' thumbnail JPEGs one after the other (thumb_offset, thumb_size)


class Embedder:
    """A loaded model turned into a part embedder.

    Args:
        model: a SuperCLIP model in eval mode on ``device``.
        token_weights: (V,) IDF weights of the checkpoint's statistics, or None: tokens of weight 0 are never tags.
        dtype: ``float16`` or ``float32``, how embeddings are stored.
    """

    def __init__(self, model, preprocess, tokenizer, device, precision: str = "fp32", top_k: int = 5,
                 dtype: str = "float16", batch_size: int = 64, workers: int = 2,
                 token_weights: Optional[torch.Tensor] = None, thumb_size: int = 256,
                 tag_words: Optional[torch.Tensor] = None):
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.thumb_size = thumb_size
        self.device, self.precision, self.top_k = torch.device(device), precision, top_k
        self.dtype, self.batch_size, self.workers = np.dtype(dtype), batch_size, workers
        self.exclude = excluded_token_ids(tokenizer, token_weights)
        self.tag_table = TagTable(tokenizer, top_k, self.exclude, tag_words)
        self.param_dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        self.dim = int(self.forward(torch.zeros(1, 3, *_image_size(preprocess)))[0].shape[1])

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> ((B, D) float32 normalised embeddings, (B, V) float32 head logits)."""
        with autocast_for(self.precision, self.device):
            out = self.model(pixels.to(self.device, dtype=self.param_dtype), None, return_token_logits=True)
        return out["image_features"].float().cpu(), out["token_logits"].float().cpu()

    def tags(self, logits: torch.Tensor) -> List[List[Tuple[str, float]]]:
        """(B, V) head logits of a part's images -> each one's ``top_k`` (word, probability), ranked by lift over the
        part's mean (:class:`superclip.evaluate.tags.TagTable`); :meth:`run` gives the same, batch by batch."""
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
            items = _Items(len(samples), read, self.preprocess, self.thumb_size)
        else:
            items = _Items(len(plan["files"]), _file_reader(plan["files"]), self.preprocess, self.thumb_size)
        loader = DataLoader(items, batch_size=self.batch_size, num_workers=self.workers, collate_fn=_collate,
                            persistent_workers=False)
        names = ("image_path", "source", "shard_index", "size", "mtime", "sha256")
        columns: Dict[str, list] = {k: [] for k in (*names, "image_path_bytes", "tags", "tag_probs", "thumb_offset",
                                                    "thumb_size")}
        vectors, thumbs, offset = [], [], 0
        cand_values, cand_ids, prob_sum = [], [], None  # the tags are ranked once the part's mean is known
        for batch in loader:
            good = [b for b in batch if b[3] is None]
            for pos, _, meta, error, _ in batch:
                if error is not None:
                    path = meta[0] if meta else (plan["files"][pos] if "files" in plan else f"{plan['shard']}#{pos}")
                    skipped.append((path, error))
            if good:
                feats, logits = self.forward(torch.stack([b[1] for b in good]))
                vectors.append(feats)
                values, ids, total = self.tag_table.candidates(logits)
                cand_values.append(values)
                cand_ids.append(ids)
                prob_sum = total if prob_sum is None else prob_sum + total
                for (_, _, meta, _, thumb) in good:
                    for k, v in zip(names, meta):
                        columns[k].append(v)
                    columns["image_path"][-1] = display(meta[0])  # parquet holds UTF-8 text; the bytes beside it
                    columns["image_path_bytes"].append(raw_bytes(meta[0]))
                    columns["thumb_offset"].append(offset if thumb is not None else None)
                    columns["thumb_size"].append(len(thumb) if thumb is not None else None)
                    if thumb is not None:
                        thumbs.append(thumb)
                        offset += len(thumb)
            if progress:
                progress(len(batch))
        if vectors:
            n = sum(len(v) for v in vectors)
            tags = self.tag_table.rank(torch.cat(cand_values), torch.cat(cand_ids), (prob_sum / n).log())
            columns["tags"] = [[w for w, _ in t] for t in tags]
            columns["tag_probs"] = [[float(p) for _, p in t] for t in tags]
        emb = torch.cat(vectors).numpy() if vectors else np.zeros((0, self.dim), dtype=np.float32)
        return PartResult(emb.astype(self.dtype), columns, skipped, b"".join(thumbs))


def load_for_search(model: Optional[str], pretrained: Optional[str], device: str = "cpu", precision: str = "fp32",
                    cache_dir: Optional[str] = None, seed: Optional[int] = None):
    """(model in eval mode, val preprocess, tokenizer, (V,) IDF token weights or None, info) for indexing and
    serving; ``info``: the checkpoint's local ``path``, its ``token_stats`` (or None) and ``sha256`` (of the
    checkpoint, or of the weights themselves for random weights drawn with ``seed``: no ``pretrained``)."""
    from ..loss import idf_weights
    from ..model import get_tokenizer, get_transforms
    from ..weights import load_model

    if pretrained is None:
        if seed is None:
            raise ConfigError("no checkpoint (--pretrained): an index of random weights finds nothing; to build one "
                              "on purpose (a test, a benchmark), add --random-weights SEED")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net, stats, info = load_model(model, pretrained=None, device="cpu", cache_dir=cache_dir)
        net = net.to(device)
    else:
        net, stats, info = load_model(model, pretrained=pretrained, device=device, cache_dir=cache_dir)
    net.eval()
    weights = None
    if stats and stats["num_samples"].item() > 0:
        weights = idf_weights(stats["cap_fq"], stats["num_samples"], 1 << 30)
    if info.get("path") is not None and os.path.exists(info["path"]):
        info["path"] = os.path.realpath(info["path"])
    info["token_stats"] = stats
    info["sha256"] = checkpoint_hash(info.get("path")) if pretrained is not None else weights_sha256(net)
    return net, get_transforms(net)[1], get_tokenizer(net.config), weights, info


def weights_sha256(net) -> str:
    """sha256 of a model's weights (names, shapes, dtypes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def index_model(manifest: Dict, root: str, device: str = "cpu", precision: str = "fp32",
                cache_dir: Optional[str] = None):
    """:func:`load_for_search` for the model an index was built with, checked: the checkpoint must still be where
    the manifest says and hold the same bytes (sha256); random weights are drawn again from their recorded seed."""
    pretrained = manifest.get("pretrained")
    if pretrained is not None and not os.path.exists(pretrained):
        raise ConfigError(f"the checkpoint of {root} is gone from {pretrained}: if it moved, point the index at it "
                          f"with superclip index relink {root} --pretrained NEW_PATH")
    loaded = load_for_search(manifest["model"], pretrained, device, precision, cache_dir,
                             manifest.get("random_weights_seed"))
    if loaded[4]["sha256"] != manifest["checkpoint_sha256"]:
        what = f"the checkpoint {pretrained}" if pretrained else "the random weights drawn from the recorded seed"
        raise ConfigError(f"{what} changed since {root} was built (sha256 differs): re-embed the index with it "
                          f"(superclip index reembed {root} --pretrained ...) or build a new one")
    return loaded
