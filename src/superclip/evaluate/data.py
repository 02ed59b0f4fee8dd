"""Reading evaluation data: ImageFolder trees, retrieval files (CSV/TSV or karpathy-style JSON), images."""
from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import List, Optional, Tuple, Union

from PIL import Image

from ..data.csv import clean_text, read_columns
from ..data.images import decode_image
from ..errors import ConfigError, require_file

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def load_image(item: Union[str, bytes]) -> Image.Image:
    """An RGB image from a path or from encoded bytes (a shard's), or a one-line error naming it."""
    name = item if isinstance(item, str) else f"({len(item)} bytes from a shard)"
    try:
        return decode_image(item)
    except FileNotFoundError:
        raise ConfigError(f"image not found: {name}") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types (DecompressionBombError is none of OSError's)
        raise ConfigError(f"cannot read image {name}: {type(e).__name__}: {e}") from None


def image_folder(root: str) -> Tuple[List[str], List[int], List[str]]:
    """(image paths, labels, folder names) of an ImageFolder tree: one sub-folder per class, sorted."""
    base = Path(root)
    if not base.is_dir():
        raise ConfigError(f"folder not found: {root}")
    classes = sorted(d.name for d in base.iterdir() if d.is_dir())
    paths, labels = [], []
    for i, name in enumerate(classes):
        for f in sorted((base / name).rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():  # not a FIFO (opening one waits forever)
                paths.append(str(f))
                labels.append(i)
    if not classes or not paths:
        raise ConfigError(f"{root} holds no class folders with images (expected ROOT/CLASS/IMAGE.jpg)")
    empty = sorted(set(range(len(classes))) - set(labels))
    if empty:  # a class without images would still compete in zero-shot, and shift the classes after it
        raise ConfigError(f"{root}: class folder {classes[empty[0]]!r} holds no images "
                          f"({len(empty)} empty class folder{'s' if len(empty) > 1 else ''}; remove them)")
    return paths, labels, classes


def read_lines(path: str, what: str) -> List[str]:
    require_file(path, f"{what} file not found: {{}}")
    p = Path(path)
    try:
        lines = [line.strip() for line in p.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not lines:
        raise ConfigError(f"{what} file {path} is empty")
    return lines


def text_value(value, where: str, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    return value


def read_utf8(path: Path) -> str:
    """The text of a JSON / JSONL file: UTF-8, a leading byte-order mark (Windows Notepad's) dropped; other
    bytes are a one-line error naming the offset."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def is_shard_pattern(path: str) -> bool:
    return path.startswith("pipe:") or ".tar" in path


def shard_pairs(pattern: str, caption_key: str = "txt") -> Tuple[List[bytes], List[str], List[int]]:
    """(image bytes, captions, caption -> image index), one caption per sample, from webdataset shards; a
    sample without a readable image or caption is left out with a warning (as training skips it)."""
    from ..data.webdataset import IMAGE_EXTS, expand_urls, iter_tar

    images: List[bytes] = []
    captions: List[str] = []
    for url in expand_urls(pattern):
        for sample in iter_tar(url):
            image = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
            try:
                if image is None:
                    raise ValueError("no image")
                caption = clean_text(sample.get(caption_key, b"").decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                log.warning("%s: sample %s left out: %s", url, sample.get("__key__", b"?").decode(errors="replace"), e)
                continue
            images.append(image)
            captions.append(caption)
    if not images:
        raise ConfigError(f"{pattern} holds no image-caption samples (caption member {caption_key!r})")
    return images, captions, list(range(len(images)))


def retrieval_pairs(path: str, img_key: str = "filepath", caption_key: str = "title",
                    separator: Optional[str] = None, split: str = "test",
                    image_root: Optional[str] = None, wds_caption_key: str = "txt") -> Tuple[List, List[str], List[int]]:
    """(images, captions, caption -> image index) from a retrieval file or shards.

    CSV/TSV (:mod:`superclip.data.csv`, the reader training uses): one row per caption, rows may share an
    image. JSON: a list of ``{"image", "caption": [...]}`` (COCO/Flickr karpathy test files as BLIP ships them)
    or ``{"images": [{"filename", "filepath"?, "sentences": [{"raw"}], "split"}]}`` (Karpathy's
    dataset_*.json; only ``split`` is used). Relative image paths are taken from ``image_root``, else the
    file's folder. Webdataset shards (a ``.tar`` pattern or ``pipe:`` URLs, :func:`shard_pairs`): the images
    are the samples' encoded bytes.
    """
    if is_shard_pattern(path):
        return shard_pairs(path, wds_caption_key)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"retrieval file not found: {path}")
    root = Path(image_root) if image_root else p.parent
    suffix = p.suffix.lower()
    images: List[str] = []
    captions: List[str] = []
    owner: List[int] = []

    def add(image: str, texts: List[str]) -> None:
        full = image if Path(image).is_absolute() else str(root / image)
        images.append(full)
        for t in texts:
            captions.append(t)
            owner.append(len(images) - 1)

    if suffix in (".csv", ".tsv"):
        grouped = {}
        rows = read_columns(path, {img_key: "--csv-img-key", caption_key: "--csv-caption-key"}, separator)
        for line, (image, text) in enumerate(rows, start=2):
            try:
                grouped.setdefault(image, []).append(clean_text(text))
            except ValueError as e:
                raise ConfigError(f"{path}, line {line}: {e}") from None
        for image, texts in grouped.items():
            add(image, texts)
    elif suffix == ".json":
        try:
            data = json.loads(read_utf8(p))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        if isinstance(data, dict) and "images" in data:
            if not isinstance(data["images"], list):
                raise ConfigError(f"{path}: 'images' must be a list of {{filename, sentences: [{{raw}}], split}}")
            for n, item in enumerate(data["images"]):
                where = f"{path}, images[{n}]"
                if not isinstance(item, dict) or "filename" not in item or not isinstance(item.get("sentences"), list):
                    raise ConfigError(f"{where}: expected {{filename, sentences: [{{raw}}], split}}")
                if item.get("split", split) == split:
                    texts = [s.get("raw") if isinstance(s, dict) else None for s in item["sentences"]]
                    add(str(Path(item.get("filepath", "")) / text_value(item["filename"], where, "filename")),
                        [text_value(t, f"{where}.sentences", "raw") for t in texts])
        elif isinstance(data, list) and data and isinstance(data[0], dict) and "image" in data[0]:
            for n, item in enumerate(data):
                where = f"{path}, item {n}"
                if not isinstance(item, dict) or "image" not in item or "caption" not in item:
                    raise ConfigError(f"{where}: expected {{image, caption}} (caption: a string or a list of them)")
                texts = item["caption"] if isinstance(item["caption"], list) else [item["caption"]]
                add(text_value(item["image"], where, "image"), [text_value(t, where, "caption") for t in texts])
        else:
            raise ConfigError(f"{path}: unknown JSON layout (expected a list of {{image, caption}} or "
                              "{images: [{filename, sentences}]})")
    else:
        raise ConfigError(f"{path}: unknown retrieval file format {suffix or '(none)'!r} "
                          "(expected .csv, .tsv or .json)")
    if not captions:
        raise ConfigError(f"{path} holds no image-caption pairs" + (f" in split {split!r}" if suffix == ".json" else ""))
    return images, captions, owner


# --- segmentation: images + index-PNG masks (ADE20K / VOC layout) ---

def read_mask(path: Path) -> "np.ndarray":  # noqa: F821 (numpy is imported inside)
    """(H, W) int64 class indices of an index PNG (mode P or L; I;16 too). Masks are read with PIL directly, not
    through decode_image: a label map must be neither converted to RGB nor rotated."""
    import numpy as np

    try:
        with Image.open(path) as m:
            if m.mode not in ("P", "L", "I", "I;16"):
                raise ConfigError(f"mask {path} is not an index PNG (mode {m.mode}; expected P or L)")
            return np.asarray(m).astype(np.int64)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types
        raise ConfigError(f"cannot read mask {path}: {type(e).__name__}: {e}") from None


def segmentation_folder(root: str, n_classes: Optional[int] = None, ignore_index: int = 255):
    """(image paths, masks) of ``ROOT/images/NAME.*`` + ``ROOT/annotations/NAME.png``, sorted by name; masks are
    (H, W) int64 arrays. Every image needs its mask; with ``n_classes`` every value must be below it or be
    ``ignore_index``."""
    base = Path(root)
    if not (base / "images").is_dir() or not (base / "annotations").is_dir():
        raise ConfigError(f"{root}: expected the folders images/ and annotations/ (images/NAME.jpg, "
                          "annotations/NAME.png)")
    images = sorted(f for f in (base / "images").iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if not images:
        raise ConfigError(f"{root}/images holds no images")
    stems = Counter(f.stem for f in images)
    twice = sorted(f.name for f in images if stems[f.stem] > 1)
    if twice:  # both would be scored against the one annotations/NAME.png
        raise ConfigError(f"{root}/images: {' and '.join(twice[:2])} share the name {Path(twice[0]).stem!r}, and so "
                          "the one mask annotations/" + Path(twice[0]).stem + ".png; keep one")
    masks = []
    for image in images:
        path = base / "annotations" / (image.stem + ".png")
        if not path.is_file():
            raise ConfigError(f"{image}: no mask {path}")
        mask = read_mask(path)
        if n_classes is not None:
            bad = (mask >= n_classes) & (mask != ignore_index)
            if bad.any():
                raise ConfigError(f"mask {path}: value {int(mask[bad].max())} is not a class (there are {n_classes}: "
                                  f"0..{n_classes - 1}) and not the ignore index {ignore_index}")
        masks.append(mask)
    if all(bool((m == ignore_index).all()) for m in masks):  # nothing to fit on or to score: a mIoU of no pixels
        raise ConfigError(f"{root}: every mask pixel is the ignore index {ignore_index}: there is nothing to fit or "
                          "score (--segmentation-ignore-index names the value left unscored)")
    return [str(p) for p in images], masks
