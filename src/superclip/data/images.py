"""The one image decoder every command uses (train, eval, embed, tag, classify, index, serve): a path or encoded
bytes in, an RGB ``PIL.Image`` out.

Where it differs from open_clip (whose transforms call ``image.convert("RGB")`` on whatever PIL opened):

- **EXIF orientation** is applied (``ImageOps.exif_transpose``): a phone photo stored sideways with an
  orientation tag is seen upright, as every viewer shows it. open_clip sees it as stored.
- **16-bit greyscale** (PNG/TIFF, modes ``I;16*``) is scaled from 0..65535 to 0..255; ``convert("RGB")`` clips
  every value above 255, so a 16-bit photo is a white image.
- **32-bit integer** (``I``): values within 0..255 are kept, within 0..65535 scaled as 16-bit data, otherwise
  scaled from the image's own range (min..max) to 0..255. **32-bit float** (``F``): values within 0..1 are
  scaled by 255, otherwise from the image's own range; NaN and infinities read as the low end. ``convert``
  clips both, so a float image in 0..1 is black.
- **Transparency** (RGBA, LA, PA, a palette or a colour with a transparent index) is composited over white,
  as a page shows it; ``convert("RGB")`` drops alpha and shows whatever colour the transparent pixels hold
  (often black).
CMYK, LAB, YCbCr, HSV, palette, bilevel and greyscale go through ``convert("RGB")`` as in open_clip; an
embedded ICC profile is not applied (as in open_clip).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Union

import numpy as np
from PIL import ExifTags, Image, ImageOps

ImageSource = Union[str, Path, bytes]
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
HEIF_SUFFIXES = (".heic", ".heif", ".hif")
HEIF_HINT = "install pillow-heif (pip install 'superclip[heic]') to read HEIC/HEIF images"
_heif = None


def heif_support() -> bool:
    """Whether HEIC/HEIF images can be read: the optional ``pillow-heif`` registers its opener with PIL (once)."""
    global _heif
    if _heif is None:
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
            _heif = True
        except ImportError:
            _heif = False
    return _heif


def image_suffixes() -> frozenset:
    """File name suffixes (lower case, with the dot) of every image type PIL opens here: its registered
    extensions (``.jfif``, ``.jpe``, ``.avif``, ... ), HEIC/HEIF with pillow-heif, and EPS only where Ghostscript
    is installed (PIL renders it through ``gs``). Left out: formats PIL only identifies without decoding (its stub
    plugins: BUFR, GRIB, HDF5, WMF; and MPEG, of which it reads only the header)."""
    import inspect
    import shutil

    from PIL import ImageFile

    heif_support()
    Image.init()
    out = set()
    for ext, fmt in Image.registered_extensions().items():
        plugin = Image.OPEN.get(fmt, (None,))[0]
        if plugin is None or fmt == "MPEG" or (fmt == "EPS" and not shutil.which("gs")):
            continue
        if inspect.isclass(plugin) and issubclass(plugin, ImageFile.StubImageFile):
            continue
        out.add(ext.lower())
    return frozenset(out)


def decode_image(source: ImageSource) -> Image.Image:
    """An RGB image decoded from a file path or from encoded bytes (a shard's member, an upload).

    Raises what PIL raises (``FileNotFoundError``, ``PIL.UnidentifiedImageError``, ``DecompressionBombError``, ...):
    each caller decides whether a bad image is a skipped sample or a one-line error.
    """
    if _heif is None:
        heif_support()
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        im.load()
        try:
            turned = im.getexif().get(ExifTags.Base.Orientation, 1) not in (1, None)
            upright = ImageOps.exif_transpose(im) if turned else im  # (a transpose copies the image)
        except (ValueError, SyntaxError, KeyError, TypeError, OSError):  # an unreadable EXIF block: as stored
            upright = im
        return to_rgb(upright)


def to_rgb(im: Image.Image) -> Image.Image:
    """``im`` as 8-bit RGB by the rules of the module docstring."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_to_8bit(np.asarray(im), mode), "L").convert("RGB")
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        page = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        page.alpha_composite(rgba)
        return page.convert("RGB")
    return im.convert("RGB")


def _to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """(H, W) uint16 / int32 / float32 -> (H, W) uint8."""
    x = values.astype(np.float64)
    finite = np.isfinite(x)
    x[~finite] = np.nan
    lo, hi = (float(np.nanmin(x)), float(np.nanmax(x))) if finite.any() else (0.0, 0.0)
    if mode.startswith("I;16"):
        lo, hi = 0.0, 65535.0
    elif mode == "I" and lo >= 0 and hi <= 255:
        lo, hi = 0.0, 255.0
    elif mode == "I" and lo >= 0 and hi <= 65535:
        lo, hi = 0.0, 65535.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        lo, hi = 0.0, 1.0
    scaled = (x - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(x)
    return np.rint(np.nan_to_num(scaled, nan=0.0)).clip(0, 255).astype(np.uint8)
