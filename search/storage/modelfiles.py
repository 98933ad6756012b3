"""The gallery's own model files: checkpoints imported into its models/ folder."""
from __future__ import annotations

from pathlib import Path

from search.errors import GalleryError


def import_checkpoint(models_dir: Path, name: str) -> str:
    """A checkpoint given by path is copied into the gallery's `models_dir` first, so the gallery
    never depends on a file outside it; returns the name to use from then on. The file is read
    once and validated from its header before a byte is written."""
    from models.checkpoint import (
        MAX_CHECKPOINT_BYTES,
        MAX_HEADER_BYTES,
        SUFFIX,
        CheckpointError,
        validate_bytes,
    )
    from models.fsutil import FileRefused, atomic_write_bytes, read_regular_file

    path = Path(name)
    if not (name.endswith(SUFFIX) and path.is_file()):
        return name
    if path.resolve().parent == models_dir.resolve():
        return name
    try:  # read once, validate exactly these bytes, and only then write them
        data = read_regular_file(path, MAX_CHECKPOINT_BYTES + MAX_HEADER_BYTES + 8)
        meta = validate_bytes(data, str(path))
    except FileRefused as e:
        raise GalleryError(f"{path}: {e}") from None
    except CheckpointError as e:
        raise GalleryError(str(e)) from None
    dest = models_dir / f"{meta.name}{SUFFIX}"
    if dest.resolve().parent != models_dir.resolve():  # valid_name rules this out
        raise GalleryError(f"{path}: model name {meta.name!r} is not a plain name")
    if dest.exists() and dest.read_bytes() != data:
        raise GalleryError(f"this gallery already has a different model called {meta.name!r} "
                           f"({dest}); rename one of them")
    atomic_write_bytes(dest, data)
    return meta.name

