"""Reading compositional hard-negative sets: a folder in SugarCrepe's layout (one ``TYPE.json`` per type) or one
JSON / JSONL file of ``{image, positive, negatives, type}``; every item checked (images present, ids and keys
given once, negatives that differ from their caption in words and, with the tokenizer, in token ids)."""
from __future__ import annotations

import json
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from ..errors import ConfigError
from .data import read_utf8, text_value

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
            yield (where, text_value(item["filename"], where, "filename"),
                   text_value(item["caption"], where, "caption"),
                   [text_value(item["negative_caption"], where, "negative_caption")], f.stem)


def _file_records(path: Path):
    """(where, image, positive, negatives, type) from a JSON list or JSONL lines of ``{image, positive,
    negatives: [...], type}`` (``negatives`` may be one string; ``type`` defaults to ``all``)."""
    if path.suffix.lower() == ".jsonl":
        lines = [(n, line) for n, line in enumerate(read_utf8(path).splitlines(), 1) if line.strip()]
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
        yield (where, text_value(row["image"], where, "image"), text_value(row["positive"], where, "positive"),
               [text_value(t, where, "negative") for t in negatives], "all" if kind is None else str(kind))


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
        return json.loads(read_utf8(path), object_pairs_hook=_JSONObject.of)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None


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
