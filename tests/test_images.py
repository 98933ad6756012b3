"""Untrusted files: every kind of bad input gets a one-line reason; odd modes are converted."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from models.imageio import BadImage, decode

pytestmark = pytest.mark.fast  # PIL and numpy only, no torch


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_empty_file():
    with pytest.raises(BadImage, match="empty"):
        decode(b"")


def test_not_an_image():
    with pytest.raises(BadImage, match="not an image"):
        decode(b"hello, this is a text file\n" * 10)


def test_truncated_jpeg():
    data = encode(Image.new("RGB", (400, 300), (200, 30, 30)), "JPEG")
    with pytest.raises(BadImage, match="damaged"):
        decode(data[: len(data) // 2])


def test_decompression_bomb(bomb_png):
    with pytest.raises(BadImage, match="too large|bomb"):
        decode(bomb_png(30000, 30000))


def test_unsupported_format():
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'
    with pytest.raises(BadImage):
        decode(svg)


def test_exif_rotation_is_honoured():
    img = Image.new("RGB", (200, 100), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 100, 100))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = decode(encode(img, "JPEG", exif=exif.tobytes()))
    assert out.image.size == (100, 200)
    assert (out.width, out.height) == (100, 200)
    top = np.asarray(out.image)[:50].mean()
    bottom = np.asarray(out.image)[-50:].mean()
    assert top > 200 and bottom < 50  # the white half is now on top


@pytest.mark.parametrize(
    "img,fmt",
    [
        (Image.new("L", (64, 48), 128), "PNG"),
        (Image.new("CMYK", (64, 48), (0, 255, 255, 0)), "JPEG"),
        (Image.new("RGBA", (64, 48), (255, 0, 0, 0)), "PNG"),
        (Image.new("P", (64, 48), 3), "GIF"),
        (Image.fromarray(np.full((48, 64), 40000, dtype=np.uint16)), "PNG"),
    ],
    ids=["grey", "cmyk", "alpha", "palette", "16bit"],
)
def test_modes_become_rgb(img, fmt):
    out = decode(encode(img, fmt))
    assert out.image.mode == "RGB"
    assert out.image.size == (64, 48)


def test_alpha_is_composited_on_white():
    out = decode(encode(Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "PNG"))
    assert np.asarray(out.image).min() == 255


def test_16bit_keeps_brightness():
    out = decode(encode(Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)), "PNG"))
    assert abs(int(np.asarray(out.image)[0, 0, 0]) - 40000 // 256) <= 1


def test_large_jpeg_decodes_at_reduced_size():
    data = encode(Image.new("RGB", (4000, 3000), (10, 200, 10)), "JPEG")
    out = decode(data, target_size=224)
    assert (out.width, out.height) == (4000, 3000)
    assert max(out.image.size) < 4000  # libjpeg scaled it down while decoding
    assert min(out.image.size) >= 448
