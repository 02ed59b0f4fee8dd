"""The classification head as an open-vocabulary image tagger: its tokens, read back as words, ranked by how much this
image raises them above what the head predicts for the images around it.

The head's raw top tokens by probability are the words most captions share ("a", "of", "photo", "printed"): the same
few on every image. A tag should say what sets this image apart, so a word is ranked by its **lift**: the log of its
probability for this image over its mean probability over the collection the image is tagged with (a part of an
index, the images given to ``superclip tag``, an evaluation set). Candidates are the image's most probable words
(:data:`CANDIDATES` per tag shown), so that a word the head barely predicts cannot lead on a ratio of two tiny
numbers; function words ("a", "of", "with", ...) are never tags; and given the checkpoint's token statistics, only
words the training captions used (and not every caption) are. An image tagged alone is its own collection: its tags
are then its most probable words. ``bench/tag_precision.py`` measured the choices (docs/search.md).
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Set, Tuple

import torch

# English function words (articles, pronouns, prepositions, conjunctions, auxiliaries, common adverbs of degree):
# they say nothing about an image however often a caption uses them
FUNCTION_WORDS = frozenset("""
a an the this that these those there here it its it's they them their theirs he him his she her hers we us our you
your i me my mine one ones some any all both each every either neither no none not nor other another such own same
of in on at by for with without within into onto upon over under above below between among through throughout
across along around about against toward towards to from up down out off near beside besides behind before after
during until till since via per than as like unlike amid despite except inside outside underneath beneath beyond
and or but so yet if then else because while whereas although though unless whether
is am are was were be been being have has had having do does did doing done will would shall should can could may
might must ought let lets get gets got
very too also just only even still really quite rather much many more most less least few several
what which who whom whose when where why how whatever whichever whoever
s t re ve ll d m
""".split())

# candidates per tag shown: the k * CANDIDATES most probable words are ranked by lift (bench/tag_precision.py,
# precision@3 / @5 with 8: textures 55.3 / 41.6, scenes 67.0 / 55.1; with 2: 55.9 / 45.1 and 55.1 / 47.8)
CANDIDATES = 8


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


def caption_words(token_stats) -> Optional[torch.Tensor]:
    """(V,) bool: the words a checkpoint's training captions used, and not every caption (``cap_fq``,
    ``num_samples``: the loss's running document frequencies); None without statistics."""
    if not token_stats or float(token_stats["num_samples"].reshape(-1)[0]) <= 0:
        return None
    n = token_stats["num_samples"].double().reshape(-1)[0]
    df = token_stats["cap_fq"].double().reshape(-1)
    return (df > 0) & (df < n)


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


_WORDS = {}  # id(tokenizer) -> (tokenizer, every id's word or None): read once (~0.4 s for the CLIP vocabulary)


def vocabulary_words(tokenizer, vocab: int) -> List[Optional[str]]:
    """Every token id's word (:func:`_word`), looked up once per tokenizer."""
    held = _WORDS.get(id(tokenizer))
    if held is None or held[0] is not tokenizer or len(held[1]) < vocab:
        held = _WORDS[id(tokenizer)] = (tokenizer, [_word(tokenizer, i) for i in range(vocab)])
    return held[1][:vocab]


class TagTable:
    """The tagger, for batches: every vocabulary entry's word is looked up once, then each image's tags are read off
    its candidates.

    Args:
        tokenizer: the model's tokenizer (CLIP BPE).
        k: tags per image.
        exclude: token ids never shown (:func:`excluded_token_ids`).
        words_used: (V,) bool, the only ids that may be tags (:func:`caption_words`), or None.
    """

    def __init__(self, tokenizer, k: int = 5, exclude: Iterable[int] = (),
                 words_used: Optional[torch.Tensor] = None):
        self.tokenizer, self.k, self.exclude = tokenizer, k, set(exclude)
        self.words_used = words_used
        self.words: Optional[List[Optional[str]]] = None

    def _table(self, vocab: int) -> None:
        self.words = [None if w is None or i in self.exclude or w.lower() in FUNCTION_WORDS else w
                      for i, w in enumerate(vocabulary_words(self.tokenizer, vocab))]
        self.mask = torch.tensor([w is None for w in self.words])
        if self.words_used is not None:
            self.mask |= ~self.words_used[:vocab].bool()

    def candidates(self, logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, V) head logits -> ((B, M) probabilities and (B, M) ids of each image's candidates, most probable
        first; (V,) float64 sum of the B softmax rows, for the collection's mean)."""
        if self.words is None:
            self._table(logits.shape[1])
        probs = logits.float().softmax(dim=-1)
        n = min(self.k * CANDIDATES, int((~self.mask).sum()))
        top = probs.masked_fill(self.mask, -1.0).topk(n, dim=-1)
        return top.values, top.indices, probs.double().sum(0)

    def rank(self, values: torch.Tensor, ids: torch.Tensor, log_mean: torch.Tensor) -> List[List[Tuple[str, float]]]:
        """Each image's ``k`` (word, probability) from its candidates (:meth:`candidates`), by lift over
        ``log_mean`` ((V,) log of the collection's mean probability), best first."""
        # float64, as the sums: an image alone has a lift of exactly 0 for every word, and keeps its probability order
        lift = values.double().clamp_min(1e-30).log() - log_mean.double()[ids]
        order = lift.argsort(dim=-1, descending=True, stable=True)
        out = []
        for row_values, row_ids in zip(values.gather(1, order).tolist(), ids.gather(1, order).tolist()):
            seen, tags = set(), []
            for p, i in zip(row_values, row_ids):
                word = self.words[i]
                if p < 0 or word in seen:
                    continue
                seen.add(word)
                tags.append((word, p))
                if len(tags) == self.k:
                    break
            out.append(tags)
        return out

    def most_probable(self, logits: torch.Tensor) -> List[List[Tuple[str, float]]]:
        """(B, V) head logits -> each row's ``k`` most probable words (each image tagged alone)."""
        values, ids, _ = self.candidates(logits)
        return self.rank(values, ids, torch.zeros(logits.shape[1], dtype=torch.float64))

    def __call__(self, logits: torch.Tensor) -> List[List[Tuple[str, float]]]:
        """(B, V) head logits -> each row's ``k`` (word, probability), best first; the B images are the
        collection."""
        values, ids, total = self.candidates(logits)
        return self.rank(values, ids, (total / max(1, len(logits))).log())


def top_tags(logits: torch.Tensor, tokenizer, k: int = 5, exclude: Iterable[int] = (),
             words_used: Optional[torch.Tensor] = None) -> List[Tuple[str, float]]:
    """(word, probability) of the ``k`` tags of (V,) head logits, tagged alone: its most probable words
    (:class:`TagTable`).

    Probabilities are the head's softmax over the whole vocabulary. Word-final BPE pieces are words
    ("circle</w>" -> "circle"); pieces that only start a word are skipped, and a word reached twice is kept once.
    """
    return TagTable(tokenizer, k, exclude, words_used)(logits.reshape(1, -1))[0]
