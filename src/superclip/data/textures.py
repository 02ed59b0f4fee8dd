"""The second synthetic family: printed textures. A tile of one pattern in one ink on paper, sometimes framed.

Different objects, words and grammar from the scenes (``synthetic.py``): no shapes and no scene colours; the
coarse attribute is the ink (6 colours: crimson, navy, olive, violet, amber, cyan), the fine-grained one the
pattern (6: horizontal / vertical / diagonal stripes, dots, checks, rings), where three classes differ only in
the orientation of the same stripes. The detailed caption adds the stripe weight (fine / bold), the paper
(cream / slate) and a frame. As with the scenes, every sample is a pure function of (seed, split, index), and a
caption names exactly what is drawn.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import List, Tuple

from PIL import Image, ImageDraw

from .seeded import SeededCaptions

INKS = {"crimson": (190, 20, 60), "navy": (25, 35, 120), "olive": (115, 125, 25), "violet": (150, 85, 225),
        "amber": (245, 175, 20), "cyan": (30, 195, 215)}
PATTERNS = ("horizontal stripes", "vertical stripes", "diagonal stripes", "dots", "checks", "rings")
WEIGHTS = {"fine": 0.09, "bold": 0.17}  # period of the pattern, as a share of the tile side
PAPERS = {"cream": (238, 228, 200), "slate": (70, 80, 90)}


@dataclass(frozen=True)
class Texture:
    ink: str
    pattern: str
    weight: str
    paper: str
    framed: bool


def sample_texture(rng: random.Random) -> Texture:
    return Texture(rng.choice(list(INKS)), rng.choice(PATTERNS), rng.choice(list(WEIGHTS)), rng.choice(list(PAPERS)),
                   rng.random() < 0.5)


def _band(angle: float, offset: float, width: float, size: int) -> List[Tuple[float, float]]:
    """A long band of ``width`` pixels across the tile, at ``angle`` (radians), ``offset`` from the center."""
    dx, dy = math.cos(angle), math.sin(angle)  # along the band
    nx, ny = -dy, dx  # across it
    c = size / 2
    long = size * 1.5
    a, b = offset - width / 2, offset + width / 2
    return [(c + nx * a - dx * long, c + ny * a - dy * long), (c + nx * a + dx * long, c + ny * a + dy * long),
            (c + nx * b + dx * long, c + ny * b + dy * long), (c + nx * b - dx * long, c + ny * b - dy * long)]


def render_texture(t: Texture, size: int, rng: random.Random) -> Image.Image:
    """Draw ``t`` at ``size`` x ``size`` (random phase, slight tilt and ink shade from rng)."""
    return _draw(t, size, rng, mask=False)


MASK_CLASSES = ("paper",) + PATTERNS + ("frame",)


def render_texture_mask(t: Texture, size: int, rng: random.Random) -> Image.Image:
    """The class of every pixel of ``render_texture(t, size, rng)`` (an ``rng`` in the same state): 0 paper, 1 +
    the pattern's index in ``PATTERNS`` where ink is, 7 the frame (``MASK_CLASSES``)."""
    return _draw(t, size, rng, mask=True)


def _draw(t: Texture, size: int, rng: random.Random, mask: bool) -> Image.Image:
    # one drawing for the image and its mask, so that both consume rng alike and the ink covers the same pixels
    img = Image.new("L", (size, size), 0) if mask else Image.new("RGB", (size, size), PAPERS[t.paper])
    draw = ImageDraw.Draw(img)
    shade = rng.randint(-15, 15)
    ink = 1 + PATTERNS.index(t.pattern) if mask else tuple(max(0, min(255, c + shade)) for c in INKS[t.ink])
    period = WEIGHTS[t.weight] * size
    phase = rng.random() * period
    tilt = math.radians(rng.uniform(-6, 6))
    if t.pattern.endswith("stripes"):
        angle = {"horizontal stripes": 0.0, "vertical stripes": math.pi / 2,
                 "diagonal stripes": rng.choice((math.pi / 4, 3 * math.pi / 4))}[t.pattern] + tilt
        k = -size
        while k * period < size:
            draw.polygon(_band(angle, k * period + phase, period / 2, size), fill=ink)
            k += 1
    elif t.pattern == "dots":
        r = period * 0.3
        y = phase - period
        while y < size + period:
            x = phase - period
            while x < size + period:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=ink)
                x += period
            y += period
    elif t.pattern == "checks":
        ox, oy = phase - period, rng.random() * period - period
        for i in range(int(size / period) + 3):
            for j in range(int(size / period) + 3):
                if (i + j) % 2 == 0:
                    x, y = ox + i * period, oy + j * period
                    draw.rectangle([x, y, x + period, y + period], fill=ink)
    else:  # rings around a point inside the tile
        cx, cy = rng.uniform(0.3, 0.7) * size, rng.uniform(0.3, 0.7) * size
        r = size * 1.1
        while r > period / 4:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=ink, width=max(1, round(period / 2)))
            r -= period
    if t.framed:
        w = max(2, size // 16)
        draw.rectangle([0, 0, size - 1, size - 1], outline=len(MASK_CLASSES) - 1 if mask else (15, 15, 15), width=w)
    return img


def texture_caption(t: Texture, rng: random.Random, detailed: bool) -> str:
    """Short: ink + pattern; detailed: also weight, paper and frame. Exactly what is drawn, varied phrasing."""
    thing = f"{t.ink} {t.pattern}"
    if not detailed:
        return rng.choice(("a tile of {}", "{} on a tile", "fabric printed with {}", "a texture of {}")).format(thing)
    parts = [f"{t.weight} {thing}", rng.choice((f"on {t.paper} paper", f"printed on {t.paper}"))]
    if t.framed:
        parts.append(rng.choice(("inside a dark frame", "with a frame around it")))
    first = parts[:2] if rng.random() < 0.5 else parts[1::-1]
    return " ".join(first + parts[2:])


def texture_hard_negatives(t: Texture, rng: random.Random) -> List[Tuple[str, str, str]]:
    """(type, caption, negative caption) for ``t``. The caption names weight, ink, pattern, paper and a frame if
    there is one ("fine crimson dots on cream paper"); each negative is false by construction:

        replace_att   another ink                      replace_obj   another pattern
        swap_att      ink and paper swapped ("fine cream dots on crimson paper": no ink is a paper colour)
        add_obj       a frame added to an unframed tile

    A tile holds one pattern, so there is no count type."""
    frame = " inside a dark frame" if t.framed else ""

    def text(ink: str, pattern: str, paper: str, framed: str = frame) -> str:
        return f"{t.weight} {ink} {pattern} on {paper} paper{framed}"

    caption = text(t.ink, t.pattern, t.paper)
    out = [("replace_att", caption, text(rng.choice([i for i in INKS if i != t.ink]), t.pattern, t.paper)),
           ("replace_obj", caption, text(t.ink, rng.choice([p for p in PATTERNS if p != t.pattern]), t.paper)),
           ("swap_att", caption, text(t.paper, t.pattern, t.ink))]
    if not t.framed:
        out.append(("add_obj", caption, text(t.ink, t.pattern, t.paper, " inside a dark frame")))
    return out


class SyntheticTextures(SeededCaptions):
    """The textures as (PIL image, caption), the counterpart of the scenes' ``SyntheticCaptions``."""

    prefix = "textures-"
    draw_scene = staticmethod(sample_texture)
    render = staticmethod(render_texture)
    describe = staticmethod(texture_caption)


TEXTURE_TASKS = ("pattern", "ink", "ink+pattern")
_TEMPLATES = ["a tile of {c}", "{c} on a tile", "a texture of {c}"]


def texture_task(task: str, num_samples: int, image_size: int = 64, seed: int = 0):
    """(images, labels, classnames, templates) for one zero-shot task on test textures. ``ink`` prompts average
    over every pattern, since captions never name an ink alone."""
    if task not in TEXTURE_TASKS:
        raise ValueError(f"unknown task {task!r}; known: {TEXTURE_TASKS}")
    data = SyntheticTextures(num_samples, image_size=image_size, seed=seed, split="test")
    if task == "pattern":
        classnames, templates = list(PATTERNS), _TEMPLATES
    elif task == "ink":
        classnames, templates = list(INKS), ["a tile of {c} " + p for p in PATTERNS]
    else:
        classnames, templates = [f"{i} {p}" for i in INKS for p in PATTERNS], _TEMPLATES
    images, labels = [], []
    for i in range(num_samples):
        t = data.scene(i)
        images.append(data[i][0])
        labels.append(classnames.index({"pattern": t.pattern, "ink": t.ink}.get(task, f"{t.ink} {t.pattern}")))
    return images, labels, classnames, templates
