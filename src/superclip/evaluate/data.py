"""Reading evaluation data: ImageFolder trees, retrieval files (CSV/TSV or karpathy-style JSON), images."""
from __future__ import annotations

import json
import logging
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

from PIL import Image

from ..data.csv import clean_text, read_columns
from ..data.images import decode_image
from ..errors import ConfigError

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
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not lines:
        raise ConfigError(f"{what} file {path} is empty")
    return lines


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
            data = json.loads(p.read_text())
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
                    add(str(Path(item.get("filepath", "")) / _text(item["filename"], where, "filename")),
                        [_text(t, f"{where}.sentences", "raw") for t in texts])
        elif isinstance(data, list) and data and isinstance(data[0], dict) and "image" in data[0]:
            for n, item in enumerate(data):
                where = f"{path}, item {n}"
                if not isinstance(item, dict) or "image" not in item or "caption" not in item:
                    raise ConfigError(f"{where}: expected {{image, caption}} (caption: a string or a list of them)")
                texts = item["caption"] if isinstance(item["caption"], list) else [item["caption"]]
                add(_text(item["image"], where, "image"), [_text(t, where, "caption") for t in texts])
        else:
            raise ConfigError(f"{path}: unknown JSON layout (expected a list of {{image, caption}} or "
                              "{images: [{filename, sentences}]})")
    else:
        raise ConfigError(f"{path}: unknown retrieval file format {suffix or '(none)'!r} "
                          "(expected .csv, .tsv or .json)")
    if not captions:
        raise ConfigError(f"{path} holds no image-caption pairs" + (f" in split {split!r}" if suffix == ".json" else ""))
    return images, captions, owner


# --- compositional hard negatives (SugarCrepe's layout, or one JSON / JSONL file) ---

SUGARCREPE_TYPES = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")


@dataclass
class CompositionalItems:
    """Items of a compositional set: item i is image ``images[image_of[i]]``, caption ``positives[i]``, type
    ``types[i]``; negative j belongs to item ``negative_owner[j]``. Images are listed once however many items
    share them."""

    images: List[str] = field(default_factory=list)
    image_of: List[int] = field(default_factory=list)
    positives: List[str] = field(default_factory=list)
    types: List[str] = field(default_factory=list)
    negatives: List[str] = field(default_factory=list)
    negative_owner: List[int] = field(default_factory=list)
    where: List[str] = field(default_factory=list)  # item i's file and id or line, for messages


def _text(value, where: str, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    return value


def _sugarcrepe_records(folder: Path):
    """(where, image, caption, [negative], type) from every ``TYPE.json`` of ``folder`` (SugarCrepe's files:
    ``{id: {"filename", "caption", "negative_caption"}}``)."""
    files = sorted(f for f in folder.glob("*.json") if f.is_file())
    if not files:
        raise ConfigError(f"{folder} holds no type files (expected SugarCrepe's TYPE.json, e.g. "
                          f"{', '.join(SUGARCREPE_TYPES[:3])}, ...)")
    for f in files:
        data = _load_json(f)
        if not isinstance(data, dict):
            raise ConfigError(f"{f}: expected SugarCrepe's {{id: {{filename, caption, negative_caption}}}}")
        if not data:
            raise ConfigError(f"{f}: empty type file (no items)")
        if data.repeated:  # json.loads keeps the last of them: the others would be dropped without a word
            key, n = next(iter(data.repeated.items()))
            more = f" ({len(data.repeated)} ids repeated)" if len(data.repeated) > 1 else ""
            raise ConfigError(f"{f}: id {key} appears {n} times{more}; ids are the keys of one JSON object, so a "
                              "reader keeps one of those items and drops the others (SugarCrepe's json.load the "
                              "last): give each item its own id")
        for key, item in data.items():
            where = f"{f}, id {key}"
            if not isinstance(item, dict) or any(k not in item for k in ("filename", "caption", "negative_caption")):
                raise ConfigError(f"{where}: expected keys filename, caption, negative_caption")
            _no_repeated_keys(item, where)
            yield (where, _text(item["filename"], where, "filename"), _text(item["caption"], where, "caption"),
                   [_text(item["negative_caption"], where, "negative_caption")], f.stem)


def _file_records(path: Path):
    """(where, image, positive, negatives, type) from a JSON list or JSONL lines of ``{image, positive,
    negatives: [...], type}`` (``negatives`` may be one string; ``type`` defaults to ``all``)."""
    if path.suffix.lower() == ".jsonl":
        lines = [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
        rows = []
        for n, line in lines:
            try:
                rows.append((f"{path}, line {n}", json.loads(line, object_pairs_hook=_JSONObject.of)))
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}, line {n}: not valid JSON: {e}") from None
    else:
        data = _load_json(path)
        if not isinstance(data, list):
            raise ConfigError(f"{path}: expected a list of {{image, positive, negatives, type}}")
        rows = [(f"{path}, item {i}", row) for i, row in enumerate(data)]
    if not rows:
        raise ConfigError(f"{path}: empty (no items)")
    for where, row in rows:
        if not isinstance(row, dict) or any(k not in row for k in ("image", "positive", "negatives")):
            raise ConfigError(f"{where}: expected keys image, positive, negatives (and type)")
        _no_repeated_keys(row, where)
        negatives = row["negatives"] if isinstance(row["negatives"], list) else [row["negatives"]]
        if not negatives:
            raise ConfigError(f"{where}: no negatives")
        kind = row.get("type")
        yield (where, _text(row["image"], where, "image"), _text(row["positive"], where, "positive"),
               [_text(t, where, "negative") for t in negatives], "all" if kind is None else str(kind))


class _JSONObject(dict):
    """A JSON object that remembers the keys its text gives more than once (``repeated``: key -> count); Python's
    json, like most readers, keeps the last value of a repeated key without a word."""

    repeated: Dict[str, int]

    @classmethod
    def of(cls, pairs: List[Tuple[str, object]]) -> "_JSONObject":
        obj = cls(pairs)
        obj.repeated = {k: n for k, n in Counter(k for k, _ in pairs).items() if n > 1}
        return obj


def _no_repeated_keys(obj, where: str) -> None:
    if isinstance(obj, _JSONObject) and obj.repeated:
        key, n = next(iter(obj.repeated.items()))
        raise ConfigError(f"{where}: key {key!r} appears {n} times in one item (a JSON reader keeps only one of its "
                          "values): keep one")


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_JSONObject.of)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def same_words(a: str, b: str) -> bool:
    """Whether two captions say the same words: equal up to case, spacing and punctuation (Unicode's P* classes
    read as spaces: "a red-square." is "a red square")."""
    def words(text: str) -> str:
        return " ".join("".join(" " if unicodedata.category(c).startswith("P") else c for c in text.lower()).split())
    return words(a) == words(b)


def compositional_items(path: str, image_root: Optional[str] = None,
                        tokenizer: Optional[Callable] = None) -> CompositionalItems:
    """Read a compositional set: a folder in SugarCrepe's layout (one ``TYPE.json`` per type, the type named by
    the file) or one ``.json`` / ``.jsonl`` file of ``{image, positive, negatives, type}``. Relative image paths
    are taken from ``image_root``, else the folder (the file's folder). Every image must exist; no id or key may
    repeat; no negative may say its caption's words (:func:`same_words`: it states what the caption states, so
    its score against the caption's measures nothing) and, with ``tokenizer``, none may tokenize to the caption's
    ids (:func:`check_token_ties`)."""
    p = Path(path)
    if p.is_dir():
        records = _sugarcrepe_records(p)
    elif p.is_file():
        if p.suffix.lower() not in (".json", ".jsonl"):
            raise ConfigError(f"{path}: expected a SugarCrepe folder, a .json or a .jsonl file")
        records = _file_records(p)
    else:
        raise ConfigError(f"compositional set not found: {path}")
    root = Path(image_root) if image_root else (p if p.is_dir() else p.parent)
    if not root.is_dir():
        raise ConfigError(f"image folder not found: {root}")
    out, index = CompositionalItems(), {}
    for where, image, positive, negatives, kind in records:
        full = image if Path(image).is_absolute() else str(root / image)
        if full not in index:
            if not Path(full).is_file():
                raise ConfigError(f"{where}: image not found: {full}")
            index[full] = len(out.images)
            out.images.append(full)
        for negative in negatives:
            if same_words(negative, positive):
                raise ConfigError(f"{where}: negative caption equals the caption up to case, spacing and punctuation "
                                  f"({negative!r} vs {positive!r}): it states what the caption states, so whether "
                                  "it scores below the caption measures nothing: fix or remove the item")
            out.negatives.append(negative)
            out.negative_owner.append(len(out.positives))
        out.image_of.append(index[full])
        out.positives.append(positive)
        out.types.append(kind)
        out.where.append(where)
    if tokenizer is not None:
        check_token_ties(out, tokenizer)
    return out


def check_token_ties(items: CompositionalItems, tokenizer: Callable) -> None:
    """A one-line error for the first negative whose token ids (what the text tower reads) equal its caption's:
    captions that differ only past the context length (77 tokens for CLIP; the tokenizer cuts the rest), or
    only in what the tokenizer's cleaning removes (``&amp;`` against ``&``, the ligature "ﬁ" against "fi"). Such
    a pair gets the same embedding, so the item can only tie, and a tie is never a win: scored, a silent loss."""
    import torch

    texts = list(dict.fromkeys(items.positives + items.negatives))
    row = {t: i for i, t in enumerate(texts)}
    ids = torch.cat([torch.as_tensor(tokenizer(texts[s:s + 4096])) for s in range(0, len(texts), 4096)])
    for negative, owner in zip(items.negatives, items.negative_owner):
        a, b = ids[row[items.positives[owner]]], ids[row[negative]]
        if torch.equal(a, b):
            why = (f"both fill the {len(a)}-token window and differ only after it, where the tokenizer cuts them"
                   if bool(a[-1] != 0) else "the tokenizer's text cleaning makes them one text (HTML entities, "
                   "Unicode forms such as ligatures, case; punctuation for tokenizers that drop it)")
            short = negative if len(negative) <= 60 else negative[:28] + " ... " + negative[-28:]
            raise ConfigError(f"{items.where[owner]}: the negative caption {short!r} has the caption's token ids: "
                              f"{why}; it can only tie and a tie is not a win: shorten or fix the item")


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
