"""Previews of untrusted images for the faces (the app's thumbnails and query previews): a base
module like search.units, through the engine's bounded decoder (models/imageio.py)."""
from __future__ import annotations

from pathlib import Path


def preview(source: bytes | str | Path, size: int = 256) -> bytes | None:
    """A square JPEG of an untrusted image (bytes, or a photo file), through the engine's bounded
    decoder (pixel and aspect limits from the header, reduced-size JPEG decode); None if it is
    not a usable image."""
    import io

    from PIL import ImageOps

    from models.imageio import BadImage, decode, read_photo_file

    try:
        data = source if isinstance(source, bytes) else read_photo_file(source)
        im = ImageOps.fit(decode(data, target_size=size).image, (size, size))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
        return buf.getvalue()
    except (BadImage, OSError, ValueError):
        return None
