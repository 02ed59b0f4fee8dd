"""Icon names as text: the words of a name, training captions, the concept an icon draws, and hard negatives that
change exactly one word of a caption.

A name is hyphenated words (``arrow-left-circle-outline``, ``home-20-regular``, ``house-fill``). Its trailing run of
style words, grid sizes and variant numbers is not what the icon shows but how it is drawn: style words become one
canonical word each (``fill`` / ``solid`` -> ``filled``; ``line`` / ``regular`` / ``o`` -> ``outline``), sizes and
variant numbers are dropped. The rest is the **concept** (``arrow left circle``, ``home``), which many sets share.
A word that is also a thing (``line``, ``light``, ``bold``, ...: ``chart-line``, ``traffic-light``,
``format-bold``) counts as a style only where the same set also draws the stem alone or in another style
(``home-line`` beside ``home-fill``); ``siblings`` are the set's names for that check. The same holds for a
leading style word (Google's ``ic`` names its styles first: ``outline-home``, ``round-home``, ``baseline-home``).
"""
from __future__ import annotations

import random
from typing import AbstractSet, Dict, List, Optional, Set, Tuple

STYLES = {"outline": "outline", "outlined": "outline", "line": "outline", "linear": "outline", "stroke": "outline",
          "regular": "outline", "o": "outline", "fill": "filled", "filled": "filled", "solid": "filled",
          "bold": "bold", "thin": "thin", "light": "light", "duotone": "duotone", "twotone": "duotone",
          "sharp": "sharp", "round": "rounded", "rounded": "rounded", "baseline": "filled"}
UNAMBIGUOUS_STYLES = {"outline", "outlined", "fill", "filled", "solid", "duotone", "twotone"}
VARIANT_WORDS = {"alt", "variant"}
DIRECTIONS = {"left": "right", "right": "left", "up": "down", "down": "up", "top": "bottom", "bottom": "top",
              "horizontal": "vertical", "vertical": "horizontal", "clockwise": "counterclockwise",
              "counterclockwise": "clockwise"}
SHAPES = ("circle", "square", "triangle", "rectangle", "hexagon", "octagon", "pentagon", "diamond")
STYLE_SWAP = {"outline": "filled", "filled": "outline", "bold": "thin", "thin": "bold", "light": "bold"}
OFF_WORDS = ("off", "slash")
# hard-negative type -> the words it may change (the caption's word, the negative's word)
TYPE_WORDS = {"replace_direction": set(DIRECTIONS), "replace_shape": set(SHAPES), "replace_style": set(STYLE_SWAP),
              "add_off": set(OFF_WORDS), "drop_off": set(OFF_WORDS)}
TRAIN_TEMPLATES = ("{w} icon", "an icon of {w}", "{w}", "{w} icon from {s}", "{w}, from the {s} icon set")
CATEGORY_TEMPLATES = ("{w} icon, {c}", "{c}: {w}")
EVAL_TEMPLATE = "{w} icon"  # the caption of retrieval and hard negatives: one of the training templates
ZERO_SHOT_TEMPLATES = ("{c} icon", "an icon of {c}", "{c}")


Siblings = Optional[AbstractSet[str]]


def _is_style(tokens: List[str], siblings: Siblings) -> bool:
    t = tokens[-1]
    if t not in STYLES:
        return False
    if t in UNAMBIGUOUS_STYLES:
        return True
    stem = "-".join(tokens[:-1])
    return siblings is not None and (stem in siblings or any(f"{stem}-{s}" in siblings for s in STYLES if s != t))


def split_name(name: str, siblings: Siblings = None) -> Tuple[List[str], List[str]]:
    """(concept words, canonical style words) of an icon name; the concept keeps at least one word."""
    tokens = [t for t in name.lower().replace("_", "-").split("-") if t]
    styles: List[str] = []
    if len(tokens) > 1 and tokens[0] in STYLES and siblings is not None:
        rest = "-".join(tokens[1:])
        if rest in siblings or any(f"{s}-{rest}" in siblings for s in STYLES if s != tokens[0]):
            styles.append(STYLES[tokens.pop(0)])
    while len(tokens) > 1 and (tokens[-1].isdigit() or tokens[-1] in VARIANT_WORDS or _is_style(tokens, siblings)):
        t = tokens.pop()
        if t in STYLES and STYLES[t] not in styles:
            styles.insert(0, STYLES[t])
    return tokens, styles


def concept(name: str, siblings: Siblings = None) -> str:
    """What the icon shows, shared across sets: ``home-20-regular`` and ``home-fill`` are both ``home``."""
    return " ".join(split_name(name, siblings)[0])


def name_text(name: str, siblings: Siblings = None) -> str:
    """The name as caption words: concept then style (``arrow left circle outline``)."""
    words, styles = split_name(name, siblings)
    return " ".join(words + styles)


def eval_caption(name: str, siblings: Siblings = None) -> str:
    return EVAL_TEMPLATE.format(w=name_text(name, siblings))


def train_caption(name: str, set_name: str, category: Optional[str], rng: random.Random,
                  siblings: Siblings = None) -> str:
    """One of the training templates, drawn with ``rng``: from the name, the set's name and (where the set groups
    its icons) the icon's category."""
    templates = TRAIN_TEMPLATES + (CATEGORY_TEMPLATES if category else ())
    return rng.choice(templates).format(w=name_text(name, siblings), s=set_name, c=(category or "").lower())


def hard_negatives(name: str, rng: random.Random, off_concepts: Set[str],
                   siblings: Siblings = None) -> List[Tuple[str, str, str, List]]:
    """(type, caption, negative caption, [word replaced or None, word put in or None]) for one icon, one item per
    type its name allows; every negative is the caption with exactly one word changed, added or dropped:

        replace_direction   a direction word -> its opposite (left/right, up/down, top/bottom, ...), when the
                            opposite is not in the name already (``arrow left right`` has no such negative)
        replace_shape       a shape word -> another shape not in the name (circle -> square, ...)
        replace_style       the style word -> its opposite (outline/filled, bold/thin, light -> bold)
        add_off             "off" or "slash" added after the concept, for concepts that some set also draws "off"
        drop_off            the "off" / "slash" of the name dropped
    """
    words, styles = split_name(name, siblings)
    caption = EVAL_TEMPLATE.format(w=" ".join(words + styles))
    out = []

    def item(kind, new_words, new_styles, changed):
        out.append((kind, caption, EVAL_TEMPLATE.format(w=" ".join(new_words + new_styles)), changed))

    at = [i for i, w in enumerate(words) if w in DIRECTIONS and DIRECTIONS[w] not in words]
    if at:
        i = rng.choice(at)
        item("replace_direction", words[:i] + [DIRECTIONS[words[i]]] + words[i + 1:], styles,
             [words[i], DIRECTIONS[words[i]]])
    at = [i for i, w in enumerate(words) if w in SHAPES]
    if at:
        i = rng.choice(at)
        new = rng.choice([s for s in SHAPES if s not in words])
        item("replace_shape", words[:i] + [new] + words[i + 1:], styles, [words[i], new])
    at = [i for i, s in enumerate(styles) if s in STYLE_SWAP and STYLE_SWAP[s] not in styles]
    if at:
        i = rng.choice(at)
        item("replace_style", words, styles[:i] + [STYLE_SWAP[styles[i]]] + styles[i + 1:],
             [styles[i], STYLE_SWAP[styles[i]]])
    offs = [i for i, w in enumerate(words) if w in OFF_WORDS]
    if offs and len(words) > 1:
        i = rng.choice(offs)
        item("drop_off", words[:i] + words[i + 1:], styles, [words[i], None])
    elif not offs and " ".join(words) in off_concepts:
        word = rng.choice(OFF_WORDS)
        item("add_off", words + [word], styles, [None, word])
    return out


def off_concepts(names_by_set: Dict[str, AbstractSet[str]]) -> Set[str]:
    """Concepts drawn somewhere with "off" or "slash" (``bell`` for ``bell-off``): those get an add_off negative."""
    out = set()
    for names in names_by_set.values():
        for n in names:
            words, _ = split_name(n, names)
            if len(words) > 1 and words[-1] in OFF_WORDS:
                out.add(" ".join(words[:-1]))
    return out


def rank_concepts(held_names: Dict[str, AbstractSet[str]], train_concepts: Set[str], k: int) -> List[str]:
    """The ``k`` concepts drawn by the most held-out sets (ties: more held-out icons, then alphabetical), among
    those training also names, so that zero-shot asks for words the model has read. ``held_names``: each held-out
    set's names (also the siblings of the style check)."""
    sets_of: Dict[str, Set[str]] = {}
    count: Dict[str, int] = {}
    for prefix, names in held_names.items():
        for n in names:
            c = concept(n, names)
            sets_of.setdefault(c, set()).add(prefix)
            count[c] = count.get(c, 0) + 1
    ranked = sorted((c for c in sets_of if c in train_concepts), key=lambda c: (-len(sets_of[c]), -count[c], c))
    return ranked[:k]
