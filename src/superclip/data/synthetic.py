"""Procedurally drawn captioned scenes: one to three shapes with colour, size and position on a background.

Every sample is a pure function of (seed, split, index): the same arguments give identical bytes. Captions
come in a short style ("a red circle") and a detailed one that names size, position and background, with
varied word order and phrasing so that no fixed position in the caption gives an attribute away.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import List, Tuple

from PIL import Image, ImageDraw

from .seeded import SeededCaptions

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40),
           "purple": (140, 60, 180), "orange": (240, 140, 30), "white": (245, 245, 245), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
BACKGROUNDS = {"grey": (128, 128, 128), "brown": (120, 85, 60), "teal": (40, 120, 120), "pink": (230, 170, 190)}
SIZES = {"small": 0.22, "large": 0.42}
POSITIONS = {"top left": (0.27, 0.27), "top right": (0.73, 0.27), "bottom left": (0.27, 0.73),
             "bottom right": (0.73, 0.73), "center": (0.5, 0.5)}


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    position: str


@dataclass(frozen=True)
class Scene:
    objects: Tuple[SceneObject, ...]
    background: str


def sample_scene(rng: random.Random) -> Scene:
    n = rng.choice((1, 1, 2, 2, 3))
    positions = rng.sample(list(POSITIONS), n)
    objects = tuple(SceneObject(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(SIZES)), p)
                    for p in positions)
    background = rng.choice([b for b in BACKGROUNDS])
    return Scene(objects, background)


def _polygon(shape: str, cx: float, cy: float, r: float) -> List[Tuple[float, float]]:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    t = r / 3  # cross
    return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t), (cx + t, cy + t),
            (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t), (cx - r, cy - t), (cx - t, cy - t)]


def render(scene: Scene, size: int, rng: random.Random) -> Image.Image:
    """Draw ``scene`` at ``size`` x ``size`` pixels (a little positional jitter and background noise from rng)."""
    return _draw(scene, size, rng, mask=False)


def render_mask(scene: Scene, size: int, rng: random.Random) -> Image.Image:
    """The class of every pixel of ``render(scene, size, rng)`` (an ``rng`` in the same state): 0 background (and
    its clutter), 1 + the shape's index in ``SHAPES`` under each shape, the later shape on top as drawn."""
    return _draw(scene, size, rng, mask=True)


MASK_CLASSES = ("background",) + SHAPES


def _draw(scene: Scene, size: int, rng: random.Random, mask: bool) -> Image.Image:
    # one drawing for the image and its mask, so that both consume rng alike and the shapes cover the same pixels
    img = Image.new("L", (size, size), 0) if mask else Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    for _ in range(6):  # faint clutter, so that the background is not a flat colour
        x, y = rng.random() * size, rng.random() * size
        d = rng.randint(-25, 25)  # lighter or darker, never another hue
        shade = tuple(max(0, min(255, c + d)) for c in BACKGROUNDS[scene.background])
        if not mask:
            draw.rectangle([x, y, x + size / 8, y + size / 8], fill=shade)
    for obj in scene.objects:
        px, py = POSITIONS[obj.position]
        cx = (px + rng.uniform(-0.04, 0.04)) * size
        cy = (py + rng.uniform(-0.04, 0.04)) * size
        r = SIZES[obj.size] * size / 2
        colour = 1 + SHAPES.index(obj.shape) if mask else COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:
            draw.polygon(_polygon(obj.shape, cx, cy, r), fill=colour)
    return img


def _phrase(obj: SceneObject, rng: random.Random, detailed: bool) -> str:
    if not detailed:
        return f"a {obj.colour} {obj.shape}"
    where = rng.choice((f"at the {obj.position}", f"in the {obj.position}")) if obj.position != "center" else \
        rng.choice(("in the center", "at the center"))
    if rng.random() < 0.5:
        return f"a {obj.size} {obj.colour} {obj.shape} {where}"
    return f"{where} a {obj.size} {obj.colour} {obj.shape}"


def caption(scene: Scene, rng: random.Random, detailed: bool) -> str:
    """A caption that mentions exactly the attributes drawn (short: colour + shape; detailed: all)."""
    objs = list(scene.objects)
    rng.shuffle(objs)
    phrases = [_phrase(o, rng, detailed) for o in objs]
    body = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    if not detailed:
        return rng.choice(("{}", "a picture of {}", "{} drawn", "an image showing {}")).format(body)
    bg = rng.choice((f"on a {scene.background} background", f"over {scene.background}"))
    return f"{bg}, {body}" if rng.random() < 0.5 else f"{body} {bg}"


class SyntheticCaptions(SeededCaptions):
    """The scenes: one to three shapes with colour, size and position on a background."""

    draw_scene = staticmethod(sample_scene)
    render = staticmethod(render)
    describe = staticmethod(caption)


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def _listing(phrases: List[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def scene_hard_negatives(scene: Scene, rng: random.Random) -> List[Tuple[str, str, str]]:
    """(type, caption, negative caption) for ``scene``, one per type that the scene allows. The caption names every
    shape ("a red circle and a blue square"); each negative names a (colour, shape) the scene does not hold, or one
    more of it than it holds, so it is false by construction:

        replace_att   one shape's colour replaced          swap_att   the colours of two shapes swapped
        replace_obj   one shape replaced by another        add_obj    a shape added
        count         one shape said twice ("two red circles")
    """
    objs = [(o.colour, o.shape) for o in scene.objects]
    held = set(objs)
    phrase = [f"a {c} {s}" for c, s in objs]
    caption = _listing(phrase)

    def with_phrase(k: int, text: str) -> str:
        return _listing(phrase[:k] + [text] + phrase[k + 1:])

    out = []
    k = rng.randrange(len(objs))
    c, s = objs[k]
    colour = rng.choice([x for x in COLOURS if (x, s) not in held])
    out.append(("replace_att", caption, with_phrase(k, f"a {colour} {s}")))
    shape = rng.choice([x for x in SHAPES if (c, x) not in held])
    out.append(("replace_obj", caption, with_phrase(k, f"a {c} {shape}")))
    pairs = [(i, j) for i in range(len(objs)) for j in range(i + 1, len(objs))
             if objs[i][0] != objs[j][0] and objs[i][1] != objs[j][1]
             and (objs[j][0], objs[i][1]) not in held and (objs[i][0], objs[j][1]) not in held]
    if pairs:
        i, j = rng.choice(pairs)
        swapped = list(phrase)
        swapped[i], swapped[j] = f"a {objs[j][0]} {objs[i][1]}", f"a {objs[i][0]} {objs[j][1]}"
        out.append(("swap_att", caption, _listing(swapped)))
    new = rng.choice([(x, y) for x in COLOURS for y in SHAPES if (x, y) not in held])
    out.append(("add_obj", caption, _listing(phrase + [f"a {new[0]} {new[1]}"])))
    once = [i for i, o in enumerate(objs) if objs.count(o) == 1]
    if once:
        i = rng.choice(once)
        out.append(("count", caption, with_phrase(i, f"two {objs[i][0]} {_plural(objs[i][1])}")))
    return out


ZERO_SHOT_TASKS = ("shape", "colour", "colour+shape")


def zero_shot_task(task: str, num_samples: int, image_size: int = 64, seed: int = 0):
    """(images, labels, classnames, templates) for one zero-shot task on single-object test scenes.

    ``colour`` prompts average over every shape ("a red circle", "a red square", ...), since captions never
    name a colour without a shape.
    """
    if task not in ZERO_SHOT_TASKS:
        raise ValueError(f"unknown task {task!r}; known: {ZERO_SHOT_TASKS}")
    data = SyntheticCaptions(num_samples, image_size=image_size, seed=seed, split="test")
    colours = list(COLOURS)
    if task == "shape":
        classnames, templates = list(SHAPES), ["a {c}", "a picture of a {c}", "an image showing a {c}"]
    elif task == "colour":
        classnames, templates = colours, ["a {c} " + s for s in SHAPES]
    else:
        classnames = [f"{c} {s}" for c in colours for s in SHAPES]
        templates = ["a {c}", "a picture of a {c}", "an image showing a {c}"]
    images, labels = [], []
    for i in range(num_samples):
        scene = data.scene(i)
        scene = Scene(scene.objects[:1], scene.background)
        obj = scene.objects[0]
        images.append(render(scene, image_size, random.Random(f"{seed}-{data.offset + i}-draw")))
        name = {"shape": obj.shape, "colour": obj.colour}.get(task, f"{obj.colour} {obj.shape}")
        labels.append(classnames.index(name))
    return images, labels, classnames, templates
