"""The one image decoder every command uses (train, eval, embed, tag, classify, index, serve): a path or encoded
bytes in, an RGB ``PIL.Image`` out."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Union

from PIL import Image

ImageSource = Union[str, Path, bytes]


def decode_image(source: ImageSource) -> Image.Image:
    """An RGB image decoded from a file path or from encoded bytes (a shard's member, an upload).

    Raises what PIL raises (``FileNotFoundError``, ``PIL.UnidentifiedImageError``, ``DecompressionBombError``, ...):
    each caller decides whether a bad image is a skipped sample or a one-line error.
    """
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        return im.convert("RGB")
