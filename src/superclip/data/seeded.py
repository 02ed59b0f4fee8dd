"""The base of every synthetic family: a map-style dataset whose samples are pure functions of (seed, split, index).
It knows no family; the registry (families.py) is the one module that knows them all."""
from __future__ import annotations

import random
from typing import Tuple

from PIL import Image

SPLIT_OFFSET = {"train": 0, "val": 1 << 40, "test": 2 << 40}


class SeededCaptions:
    """Map-style dataset of (PIL image, caption), deterministic in (seed, split, index): a family supplies
    ``draw_scene(rng)``, ``render(scene, size, rng)`` and ``describe(scene, rng, detailed)``.

    Args:
        num_samples: length of the split.
        image_size: side in pixels.
        seed: generator seed; splits never share a (seed, index).
        split: train, val or test.
        detailed_prob: probability of the detailed caption style (else short).
    """

    prefix = ""  # keeps families' random streams apart

    def __init__(self, num_samples: int, image_size: int = 64, seed: int = 0, split: str = "train",
                 detailed_prob: float = 0.5):
        self.num_samples = num_samples
        self.image_size = image_size
        self.seed = seed
        self.offset = SPLIT_OFFSET[split]
        self.detailed_prob = detailed_prob

    def __len__(self) -> int:
        return self.num_samples

    def _rng(self, index: int, what: str) -> random.Random:
        return random.Random(f"{self.prefix}{self.seed}-{self.offset + index}-{what}")

    def scene(self, index: int):
        return self.draw_scene(self._rng(index, "scene"))

    def sample(self, index: int) -> Tuple[Image.Image, str, str]:
        """(image, short caption, detailed caption) of one sample."""
        scene, rng = self.scene(index), self._rng(index, "draw")
        image = self.render(scene, self.image_size, rng)
        return image, self.describe(scene, rng, detailed=False), self.describe(scene, rng, detailed=True)

    def __getitem__(self, index: int) -> Tuple[Image.Image, str]:
        scene, rng = self.scene(index), self._rng(index, "draw")
        image = self.render(scene, self.image_size, rng)
        return image, self.describe(scene, rng, detailed=rng.random() < self.detailed_prob)
