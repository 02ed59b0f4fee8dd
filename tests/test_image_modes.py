"""The one image decoder (issue 21, item 6): high-bit-depth and float modes scaled, not clipped; EXIF orientation
applied; transparency, palette, CMYK and LAB sane. Each file is written by PIL; each test says what
``convert("RGB")`` (main's decoder, and open_clip's) gave for it."""
import io

import numpy as np
import pytest
from PIL import Image

from superclip.data.images import decode_image


def encoded(im, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def grey16(values) -> Image.Image:
    a = np.asarray(values, dtype="<u2")
    return Image.frombytes("I;16", a.shape[::-1], a.tobytes())


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_greyscale_is_scaled_to_8_bits(fmt):
    """Values 0, 257, 32896, 65535 -> 0, 1, 128, 255. main: 0, 255, 255, 255 (every value above 255 clipped)."""
    data = encoded(grey16([[0, 257, 32896, 65535]]), fmt)
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    assert Image.open(io.BytesIO(data)).convert("RGB").getpixel((1, 0)) == (255, 255, 255)  # main's white
    rgb = decode_image(data)
    assert [rgb.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (1, 1, 1), (128, 128, 128), (255, 255, 255)]


def test_float_tiff_in_0_1_is_scaled_by_255_and_any_other_range_by_its_own():
    """F in [0, 1]: 0.0, 0.25, 1.0 -> 0, 64, 255 (main: 0, 0, 1: black). F in [-2, 6] (a depth map): stretched
    to 0..255 (main: -2 -> 0, 2 -> 2, 6 -> 6); NaN reads as 0."""
    unit = Image.fromarray(np.array([[0.0, 0.25, 1.0]], np.float32), "F")
    assert [decode_image(encoded(unit, "TIFF")).getpixel((x, 0))[0] for x in range(3)] == [0, 64, 255]
    assert [Image.open(io.BytesIO(encoded(unit, "TIFF"))).convert("RGB").getpixel((x, 0))[0]
            for x in range(3)] == [0, 0, 1]
    depth = Image.fromarray(np.array([[-2.0, 2.0, 6.0, np.nan]], np.float32), "F")
    assert [decode_image(encoded(depth, "TIFF")).getpixel((x, 0))[0] for x in range(4)] == [0, 128, 255, 0]


def test_32_bit_integer_tiff():
    """I within 0..255 kept, within 0..65535 scaled as 16-bit, beyond scaled from its range.
    main: 100000 and 50000 -> 255 (clipped)."""
    def first_row(values):
        im = Image.fromarray(np.array([values], np.int32), "I")
        return [decode_image(encoded(im, "TIFF")).getpixel((x, 0))[0] for x in range(len(values))]

    assert first_row([0, 17, 255]) == [0, 17, 255]
    assert first_row([0, 32896, 65535]) == [0, 128, 255]
    assert first_row([-100000, 0, 100000]) == [0, 128, 255]


def test_exif_orientation_is_applied():
    """A 40 x 20 image, left half red, stored with Orientation 6 (rotate 90 clockwise to view): upright it is
    20 x 40 with red on top. main: 40 x 20, red on the left, as stored."""
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded(im, "PNG", exif=exif)
    assert Image.open(io.BytesIO(data)).convert("RGB").size == (40, 20)
    upright = decode_image(data)
    assert upright.size == (20, 40)
    assert upright.getpixel((10, 5)) == (255, 0, 0) and upright.getpixel((10, 35)) == (0, 0, 255)


def test_transparency_is_composited_over_white():
    """A transparent pixel holding black, a half-transparent red one: (255, 255, 255) and (255, 128, 128)
    (main: (0, 0, 0) and (255, 0, 0), the hidden colour)."""
    im = Image.new("RGBA", (2, 1))
    im.putpixel((0, 0), (0, 0, 0, 0))
    im.putpixel((1, 0), (255, 0, 0, 128))
    rgb = decode_image(encoded(im, "PNG"))
    assert [rgb.getpixel((x, 0)) for x in range(2)] == [(255, 255, 255), (255, 127, 127)]
    la = Image.new("LA", (1, 1), (0, 0))
    assert decode_image(encoded(la, "PNG")).getpixel((0, 0)) == (255, 255, 255)  # main: (0, 0, 0)
    pal = Image.new("P", (2, 1), 0)
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0
    rgb = decode_image(encoded(pal, "PNG"))
    assert [rgb.getpixel((x, 0)) for x in range(2)] == [(255, 255, 255), (200, 100, 50)]  # main: (10, 20, 30), ...


def test_cmyk_lab_and_other_modes():
    """Modes convert("RGB") already gets right stay right: CMYK JPEG (Adobe, inverted) red is red, LAB (L 50%,
    a = b = 0) is sRGB's mid grey, bilevel and greyscale as they are."""
    assert decode_image(encoded(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG")).getpixel((0, 0)) == (255, 0, 0)
    lab = decode_image(encoded(Image.new("LAB", (4, 4), (128, 128, 128)), "TIFF")).getpixel((0, 0))
    assert lab[0] == lab[1] == lab[2] and 110 <= lab[0] <= 125  # sRGB's mid-grey for L* = 50 is 119
    assert decode_image(encoded(Image.new("1", (2, 2), 1), "PNG")).getpixel((0, 0)) == (255, 255, 255)
    assert decode_image(encoded(Image.new("L", (2, 2), 77), "PNG")).getpixel((0, 0)) == (77, 77, 77)
