"""The synthetic data families, by name: what a study or the demo needs from each (``--dataset-type
synthetic-NAME``, ``superclip data synth --family NAME``).

    scenes    shapes in colours on backgrounds (synthetic.py): coarse attribute colour, fine-grained shape
    textures  printed patterns in inks on paper (textures.py): coarse attribute ink, fine-grained pattern
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, FrozenSet, Optional, Tuple

from ..errors import ConfigError
from . import synthetic, textures


@dataclass(frozen=True)
class Family:
    name: str
    dataset: Callable  # (num_samples, image_size=, seed=, split=, detailed_prob=) -> map-style (image, caption)
    tasks: Tuple[str, str, str]  # zero-shot tasks: (fine-grained, coarse, both)
    zero_shot_task: Callable  # (task, num_samples, image_size, seed) -> (images, labels, classnames, templates)
    attributes: FrozenSet[str]  # caption words that name a drawn attribute (the tagger's hit rate counts them)
    hard_negatives: Optional[Callable] = None  # (scene, rng) -> [(type, caption, negative caption)], each false
    render_mask: Optional[Callable] = None  # (scene, size, rng) -> "L" image of class indices, as render draws
    mask_classes: Tuple[str, ...] = ()  # names of the mask's classes, index order

    @property
    def fine(self) -> str:
        return self.tasks[0]

    @property
    def coarse(self) -> str:
        return self.tasks[1]


FAMILIES = {
    "scenes": Family("scenes", synthetic.SyntheticCaptions, ("shape", "colour", "colour+shape"),
                     synthetic.zero_shot_task, frozenset(synthetic.COLOURS) | frozenset(synthetic.SHAPES),
                     synthetic.scene_hard_negatives, synthetic.render_mask, synthetic.MASK_CLASSES),
    "textures": Family("textures", textures.SyntheticTextures, textures.TEXTURE_TASKS[:2] + ("ink+pattern",),
                       textures.texture_task,
                       frozenset(textures.INKS) | frozenset(w for p in textures.PATTERNS for w in p.split()),
                       textures.texture_hard_negatives, textures.render_texture_mask, textures.MASK_CLASSES),
}


def get_family(name: str) -> Family:
    """A family by name; ``synthetic`` and ``synthetic-NAME`` (dataset types) are accepted too."""
    key = {"synthetic": "scenes"}.get(name, name.removeprefix("synthetic-"))
    if key not in FAMILIES:
        raise ConfigError(f"unknown synthetic family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[key]
