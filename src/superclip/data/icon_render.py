"""Drawing icons: an IconifyJSON icon as an SVG document, rasterised by resvg (the ``resvg-py`` wheel, the optional
extra ``superclip[icons]``), and icons placed on backgrounds with the class mask of every drawn pixel.

Why resvg: on 300 icons of 15 sets at 64 px it took 1.2 ms an icon against CairoSVG's 2.7 ms, rendered SVG masks
that CairoSVG gets wrong (line-md's), needs no system library (CairoSVG needs Debian's libcairo2), and gives the
same bytes on every render (both do). Every icon is drawn in black (``currentColor``) on a transparent canvas of
the requested size, its box fitted and centred (SVG's default ``xMidYMid meet``).
"""
from __future__ import annotations

import io
import random
from typing import List, Sequence, Tuple

from PIL import Image

from ..errors import ConfigError
from .iconify import Icon

ANIMATION_TAGS = ("<animate", "<set ", "<set>")
MIN_CONTRAST = 160  # RGB distance between a dense scene's background and each icon's ink


class RenderError(Exception):
    """An icon that does not render, or renders blank: counted, skipped and named, never fatal."""


def resvg():
    try:
        import resvg_py
    except ImportError:
        raise ConfigError("superclip data icons renders with resvg-py, which is not installed: "
                          "pip install 'superclip[icons]'") from None
    return resvg_py


def renderer_version() -> str:
    return f"resvg-py {resvg().__version__} (resvg {getattr(resvg(), '__resvg_version__', '?')})"


def svg_document(icon: Icon, size: int) -> str:
    """The icon's body in an ``svg`` of ``size`` x ``size`` pixels over its box, drawn in black."""
    box = f"{icon.left:g} {icon.top:g} {icon.width:g} {icon.height:g}"
    return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="{size}" '
            f'height="{size}" viewBox="{box}" color="#000000">{icon.body}</svg>')


def render(icon: Icon, size: int) -> Image.Image:
    """The icon as an RGBA image of ``size`` x ``size``. An animated icon (its static frame is not the drawing its
    name describes: line-md draws its strokes in over time), an SVG resvg refuses and a blank result raise
    :class:`RenderError`."""
    if any(tag in icon.body for tag in ANIMATION_TAGS):
        raise RenderError("animated (its static frame is not the drawing)")
    try:
        png = resvg().svg_to_bytes(svg_string=svg_document(icon, size), skip_system_fonts=True)
        image = Image.open(io.BytesIO(png))
        image.load()
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - resvg raises ValueError, PIL several kinds
        raise RenderError(f"{type(e).__name__}: {' '.join(str(e).split())[:120]}") from None
    image = image.convert("RGBA")
    if image.size != (size, size):
        raise RenderError(f"rendered at {image.size[0]}x{image.size[1]}, not {size}x{size}")
    if image.getextrema()[3][1] == 0:
        raise RenderError("renders blank")
    return image


def on_white(image: Image.Image) -> Image.Image:
    """An RGBA drawing over a white background, as RGB."""
    canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
    canvas.alpha_composite(image)
    return canvas.convert("RGB")


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _ink(rng: random.Random, background: Tuple[int, int, int]) -> Tuple[int, int, int]:
    while True:
        ink = tuple(rng.randrange(256) for _ in range(3))
        if sum((a - b) ** 2 for a, b in zip(ink, background)) >= MIN_CONTRAST ** 2:
            return ink


def dense_scene(choices: Sequence[Tuple[int, Sequence[Icon]]], size: int, rng: random.Random):
    """One to three icons on a flat background, each in its own quarter of the canvas (so none overlaps another),
    at 60-95 % of the quarter, in an ink far from the background. ``choices``: (class index >= 1, [(set prefix,
    icon)] of that class). Returns (RGB image, mode-L mask: the class of the icon drawn at every pixel its alpha covers at least
    half, 0 elsewhere, and the placements: [{class, icon, box, ink}], background).

    An icon that fails to render is skipped, the scene keeps the others (and at least the background)."""
    import numpy as np

    background = tuple(rng.randrange(256) for _ in range(3))
    image = np.empty((size, size, 3), dtype=np.float64)
    image[:] = background
    mask = np.zeros((size, size), dtype=np.uint8)
    half = size // 2
    placed: List[dict] = []
    for cell in rng.sample(range(4), rng.choice((1, 2, 3))):
        cls, icons = rng.choice(list(choices))
        prefix, icon = rng.choice(list(icons))
        side = rng.randint(max(4, round(0.6 * half)), max(4, round(0.95 * half)))
        x = (cell % 2) * half + rng.randint(0, half - side)
        y = (cell // 2) * half + rng.randint(0, half - side)
        ink = _ink(rng, background)
        try:
            alpha = np.asarray(render(icon, side), dtype=np.float64)[..., 3:] / 255.0
        except RenderError:
            continue
        region = image[y:y + side, x:x + side]
        region[:] = region * (1 - alpha) + np.asarray(ink, dtype=np.float64) * alpha
        mask[y:y + side, x:x + side][alpha[..., 0] >= 0.5] = cls
        placed.append({"class": cls, "icon": f"{prefix}:{icon.name}", "box": [x, y, side, side], "ink": list(ink)})
    rgb = Image.fromarray(np.rint(image).astype(np.uint8), mode="RGB")
    return rgb, Image.fromarray(mask, mode="L"), {"background": list(background), "icons": placed}
