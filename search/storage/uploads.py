"""Uploaded files (the app's uploader) written to a folder under names of our own.

A multipart upload's file name is whatever the client sent: `..`, `.`, empty, a path, 300
bytes, a NUL byte, a leading dot. None of it becomes a path: each upload is written as
`NNNNN/<a cleaned copy of its name>` (the cleaned name is what the gallery shows), and one
file that cannot be written is reported and passed over, never the whole upload lost."""
from __future__ import annotations

import errno
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

MAX_NAME_BYTES = 120  # well under every file system's 255


class Upload(Protocol):
    """What the app's uploader hands over (streamlit's UploadedFile)."""

    name: str

    def getvalue(self) -> bytes: ...


@dataclass
class Staged:
    folder: Path
    written: int
    rejected: list[tuple[str, str]]  # (shown name, reason)


def safe_upload_name(name: object, n: int) -> str:
    """A plain file name for upload number `n` (0-based): the client's name without folders,
    control characters and leading dots, at most MAX_NAME_BYTES; `upload-N` when nothing of it
    is left."""
    base = re.split(r"[/\\]", str(name or ""))[-1]
    base = "".join(c for c in base if unicodedata.category(c)[0] != "C").strip().lstrip(".").strip()
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    ext = re.sub(r"[^A-Za-z0-9]", "", ext)[:8]
    budget = MAX_NAME_BYTES - len(ext) - 1
    stem = stem.encode("utf-8")[:budget].decode("utf-8", "ignore").strip() or f"upload-{n + 1}"
    return f"{stem}.{ext}" if ext else stem


def stage_uploads(files: Iterable[Upload], folder: Path, max_bytes: int) -> Staged:
    """Write each upload to `folder`/NNNNN/<safe name>; files over `max_bytes` or that cannot be
    written are listed in `rejected`. A full disk is raised (nothing more can be written)."""
    folder = Path(folder)
    staged = Staged(folder, 0, [])
    for n, f in enumerate(files):
        shown = safe_upload_name(getattr(f, "name", ""), n)
        try:
            data = f.getvalue()
            if len(data) > max_bytes:
                staged.rejected.append((shown, f"larger than {max_bytes // 2**20} MiB"))
                continue
            dest = folder / f"{n:05d}" / shown  # one folder each: same names never collide
            dest.parent.mkdir()
            dest.write_bytes(data)
            staged.written += 1
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            staged.rejected.append((shown, f"could not be stored for indexing: {e.strerror or e}"))
    return staged
