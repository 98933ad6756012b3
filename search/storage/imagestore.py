"""Content-addressed image store: images/<sha[:2]>/<sha>.<ext> under the gallery home."""
from __future__ import annotations

import hashlib
from pathlib import Path

from models.fsutil import atomic_write_bytes


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ImageStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, sha256: str, ext: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}{ext}"

    def put(self, sha256: str, ext: str, data: bytes) -> Path:
        """Idempotent: the same bytes always land at the same path."""
        path = self.path(sha256, ext)
        if not path.exists() or path.stat().st_size != len(data):
            atomic_write_bytes(path, data)
        return path

    def read(self, sha256: str, ext: str) -> bytes:
        return self.path(sha256, ext).read_bytes()
