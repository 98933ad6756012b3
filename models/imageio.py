"""Decoding untrusted image files into RGB PIL images, or a one-line reason why not."""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

# Refuse anything larger than this many pixels, read from the header before decoding
# (decompression bombs). JPEGs decode at reduced scale (draft mode), so they may be larger than
# formats that decode in full: a 108 MP phone JPEG passes; a 15000 x 15000 PNG (225 MP, ~1 GB
# to decode) does not.
MAX_PIXELS = 120_000_000
MAX_FULL_DECODE_PIXELS = 64_000_000  # non-JPEG formats: 8000 x 8000
MAX_BYTES = 200 * 1024 * 1024
# Preprocessing scales the short side up to the model's input size before cropping a square:
# a 30000x1 image would become 224 x 6.7M pixels (4.5 GB). No photo is this elongated; so the
# resized image stays under size^2 * MAX_ASPECT pixels (10 MB at 260 px).
MAX_ASPECT = 50
# Only photo formats are parsed: Pillow can open ~40 (EPS runs Ghostscript, PSD, FITS, SPIDER,
# ...), each a parser that untrusted bytes would reach. (Phones' MPO files open through JPEG.)
PHOTO_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
for _plugin in ("Jpeg", "Mpo", "Png", "WebP", "Gif", "Bmp", "Tiff"):  # registered for open(formats=)
    try:
        __import__(f"PIL.{_plugin}ImagePlugin")
    except ImportError:  # pragma: no cover (a Pillow built without WebP)
        pass
PHOTO_FORMATS = tuple(f for f in PHOTO_FORMATS if f in Image.OPEN)
# A non-JPEG image over this many pixels is reduced (box filter, integer factor) right after
# decoding to >= 2x the model's input size: one decoded at a time is bounded by MAX_FULL_DECODE_
# PIXELS, but callers that hold several (a compare's query set) hold the reduced copies only.
REDUCE_FROM_PIXELS = 16_000_000
_ORIENT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
           4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
           6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}  # EXIF orientation -> transpose (as ImageOps.exif_transpose)
Image.MAX_IMAGE_PIXELS = 2 * MAX_PIXELS  # PIL warns past this (an error here); our checks come first


class BadImage(ValueError):
    """The file cannot be used as a photo; str(e) is the one-line reason."""


@dataclass
class Decoded:
    image: Image.Image  # RGB, EXIF-rotated
    width: int  # of the original, after rotation
    height: int
    format: str


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        img = img.point(lambda v: v * (1 / 256)).convert("L") if mode != "I" else img.convert("L")
    elif mode == "F":
        img = img.convert("L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def read_photo_file(path) -> bytes:
    """The bytes of a photo file: regular files only (no devices, FIFOs, sockets), at most
    MAX_BYTES, read without following a size that grows while reading."""
    from .fsutil import FileRefused, read_regular_file

    try:
        return read_regular_file(path, MAX_BYTES)
    except FileRefused as e:
        raise BadImage(str(e)) from None


def decode(data: bytes, target_size: int | None = None) -> Decoded:
    """Decode bytes into an RGB image. `target_size` lets JPEG decode at reduced scale."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    if len(data) > MAX_BYTES:
        raise BadImage(f"file too large ({len(data) / 2**20:.0f} MiB > {MAX_BYTES / 2**20:.0f} MiB)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img: Image.Image = Image.open(io.BytesIO(data), formats=PHOTO_FORMATS)
            fmt = img.format or "?"
            w, h = img.size
            limit = MAX_PIXELS if fmt == "JPEG" else MAX_FULL_DECODE_PIXELS
            if w * h > limit:
                raise BadImage(f"image too large ({w}x{h} = {w * h / 1e6:.0f} MP > {limit / 1e6:.0f} MP "
                               f"for {fmt})")
            if max(w, h) > MAX_ASPECT * max(1, min(w, h)):
                raise BadImage(f"image too thin or elongated ({w}x{h}: its sides differ by more "
                               f"than {MAX_ASPECT}:1)")
            if target_size and fmt == "JPEG":
                # libjpeg DCT scaling: decode straight at >= 2x the model's input size.
                img.draft("RGB", (target_size * 2, target_size * 2))
            img.load()
            orientation = img.getexif().get(0x0112, 1)
            if orientation in (5, 6, 7, 8):  # EXIF says rotate by 90 degrees
                w, h = h, w
            small = _reduced(img, target_size) if fmt != "JPEG" else None  # JPEG: drafted
            if small is None:
                rgb = _to_rgb(ImageOps.exif_transpose(img))
            else:
                img.close()
                rgb = small.transpose(_ORIENT[orientation]) if orientation in _ORIENT else small
        except BadImage:
            raise
        except UnidentifiedImageError:
            raise BadImage("not an image (unrecognised format)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise BadImage(f"decompression bomb refused: {e}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise BadImage(f"damaged image: {e}") from None
    if w < 1 or h < 1:
        raise BadImage("image has no pixels")
    return Decoded(rgb, w, h, fmt)


def _reduced(img: Image.Image, target_size: int | None) -> Image.Image | None:
    """`img` as RGB, reduced by an integer factor to a short side >= 2x `target_size`, when it
    is over REDUCE_FROM_PIXELS; None when it is not (the caller keeps the full image)."""
    w, h = img.size
    factor = min(w, h) // (2 * target_size) if target_size else 0
    if factor < 2 or w * h <= REDUCE_FROM_PIXELS:
        return None
    if img.mode in ("P", "PA"):  # indices cannot be averaged: colours first (alpha kept)
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode not in ("L", "RGB", "RGBA", "LA", "I", "F", "CMYK"):
        img = _to_rgb(img)  # 16-bit and the rest
    return _to_rgb(img.reduce(factor))


def bounded_aspect(image: Image.Image, limit: int = MAX_ASPECT) -> Image.Image:
    """`image`, centre-cropped to sides at most `limit`:1 (unchanged when within): what an
    embedder's resize-then-crop-a-square sees, without an unbounded resize of a thin image."""
    w, h = image.size
    short = max(1, min(w, h))
    if max(w, h) <= limit * short:
        return image
    if w > h:
        left = (w - limit * short) // 2
        return image.crop((left, 0, left + limit * short, h))
    top = (h - limit * short) // 2
    return image.crop((0, top, w, top + limit * short))
