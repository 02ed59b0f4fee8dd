"""The classification head as an open-vocabulary image tagger: its top tokens, read back as words."""
from __future__ import annotations

from typing import Iterable, List, Optional, Set, Tuple

import torch


def excluded_token_ids(tokenizer, token_weights: Optional[torch.Tensor] = None) -> Set[int]:
    """Ids never worth showing: SOT, EOT, pad 0, and (given IDF weights) every id with weight 0, i.e. present
    in every caption the statistics saw."""
    out = {0}
    for name in ("sot_token_id", "eot_token_id"):
        if getattr(tokenizer, name, None) is not None:
            out.add(int(getattr(tokenizer, name)))
    out.update(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
    if token_weights is not None:
        out.update(torch.nonzero(token_weights.reshape(-1) == 0).flatten().tolist())
    return out


def _word(tokenizer, token_id: int) -> Optional[str]:
    """The word a vocabulary entry spells, if it ends a word (CLIP BPE marks that with '</w>') and is alphabetic."""
    decoder = getattr(tokenizer, "decoder", None)
    if decoder is None:
        return None
    piece = decoder.get(token_id, "")
    if not piece.endswith("</w>"):  # a word's first or middle piece: not a word on its own
        return None
    word = tokenizer.decode([token_id]).strip()
    return word if word.isalpha() else None


def top_tags(logits: torch.Tensor, tokenizer, k: int = 5, exclude: Iterable[int] = ()) -> List[Tuple[str, float]]:
    """(word, probability) for the ``k`` most probable whole-word tokens of (V,) head logits.

    Probabilities are the head's softmax over the whole vocabulary. Word-final BPE pieces are words
    ("circle</w>" -> "circle"); pieces that only start a word are skipped, and a word reached twice is kept once.
    """
    probs = logits.float().softmax(dim=-1)
    skip = set(exclude)
    tags: List[Tuple[str, float]] = []
    seen = set()
    for token_id in probs.argsort(descending=True).tolist():
        if token_id in skip:
            continue
        word = _word(tokenizer, token_id)
        if word is None or word in seen:
            continue
        seen.add(word)
        tags.append((word, probs[token_id].item()))
        if len(tags) == k:
            break
    return tags


class TagTable:
    """:func:`top_tags` for batches: every vocabulary entry's word is looked up once (``top_tags`` decodes token
    after token, ~60 ms an image for a head whose top tokens are word pieces), then each row's tags are read off
    the top ``4 k`` candidates; a row whose candidates hold fewer than ``k`` distinct words falls back to
    :func:`top_tags`. Results equal ``top_tags`` row by row."""

    def __init__(self, tokenizer, k: int = 5, exclude: Iterable[int] = ()):
        self.tokenizer, self.k, self.exclude = tokenizer, k, set(exclude)
        self.words: Optional[List[Optional[str]]] = None

    def __call__(self, logits: torch.Tensor) -> List[List[Tuple[str, float]]]:
        """(B, V) head logits -> each row's ``k`` (word, probability)."""
        if self.words is None:
            self.words = [None if i in self.exclude else _word(self.tokenizer, i) for i in range(logits.shape[1])]
            self.mask = torch.tensor([w is None for w in self.words])
        probs = logits.softmax(dim=-1)
        ranked = probs.masked_fill(self.mask, -1.0).topk(min(4 * self.k, logits.shape[1]), dim=-1)
        out = []
        for row, (values, ids) in enumerate(zip(ranked.values.tolist(), ranked.indices.tolist())):
            seen, tags = set(), []
            for p, i in zip(values, ids):
                word = self.words[i]
                if p < 0 or word is None or word in seen:
                    continue
                seen.add(word)
                tags.append((word, p))
                if len(tags) == self.k:
                    break
            if len(tags) < self.k:  # many spellings of one word among the candidates: the slow way
                tags = top_tags(logits[row], self.tokenizer, self.k, self.exclude)
            out.append(tags)
        return out
