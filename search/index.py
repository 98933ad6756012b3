"""FAISS index of one embedding space: exact inner product over L2-normalised vectors.

The catalog is the source of truth; the index file is a cache of it. A sidecar JSON records
the catalog version of the space the file was built from; a missing, stale or unreadable file
is rebuilt from the catalog.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import faiss
import numpy as np

from .catalog import Catalog
from .fsutil import atomic_write_bytes


def _safe(space: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", space)


class SpaceIndex:
    def __init__(self, space: str, dim: int, index: faiss.Index | None = None, version: int = 0):
        self.space = space
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.version = version  # catalog space version this index reflects

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.index.ntotal:
            self.index.remove_ids(faiss.IDSelectorBatch(ids))
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(k, self.index.ntotal)) if self.index.ntotal else 0
        if k == 0:
            n = len(queries)
            return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
        return self.index.search(queries, k)

    # -- persistence ----------------------------------------------------------------------
    @staticmethod
    def paths(folder: Path, space: str) -> tuple[Path, Path]:
        base = Path(folder) / _safe(space)
        return base.with_suffix(".faiss"), base.with_suffix(".json")

    def save(self, folder: Path) -> None:
        index_path, meta_path = self.paths(folder, self.space)
        # Index first, sidecar last: a crash in between leaves a sidecar that does not match.
        atomic_write_bytes(index_path, faiss.serialize_index(self.index).tobytes())
        meta = {"space": self.space, "dim": self.dim, "version": self.version,
                "ntotal": int(self.index.ntotal)}
        atomic_write_bytes(meta_path, json.dumps(meta).encode())

    @classmethod
    def load(cls, folder: Path, space: str) -> "SpaceIndex | None":
        index_path, meta_path = cls.paths(folder, space)
        try:
            meta = json.loads(meta_path.read_text())
            data = np.frombuffer(index_path.read_bytes(), dtype=np.uint8)
            index = faiss.deserialize_index(data)
        except (OSError, ValueError, RuntimeError):
            return None
        if meta.get("space") != space or index.ntotal != meta.get("ntotal") or index.d != meta.get("dim"):
            return None
        return cls(space, meta["dim"], index, meta["version"])

    @classmethod
    def build(cls, catalog: Catalog, space: str) -> "SpaceIndex":
        with catalog.snapshot():
            dim = catalog.space_dim(space)
            if dim is None:
                raise KeyError(f"no vectors in space {space!r}")
            index = cls(space, dim, version=catalog.space_version(space))
            for ids, vectors in catalog.serving_vectors(space):
                index.index.add_with_ids(vectors, ids)
        return index

    def catch_up(self, catalog: Catalog) -> int:
        """Apply the vectors written since this index's version (by any process)."""
        with catalog.snapshot():
            version = catalog.space_version(space := self.space)
            n = 0
            for ids, vectors in catalog.serving_vectors(space, after_seq=self.version):
                self.upsert(ids, vectors)
                n += len(ids)
            self.version = version
        return n

    @classmethod
    def open(cls, catalog: Catalog, folder: Path, space: str) -> tuple["SpaceIndex", str]:
        """Load the saved index if it is current, else rebuild it; says which it did."""
        loaded = cls.load(folder, space)
        current = catalog.space_version(space)
        if loaded is not None and loaded.version == current:
            return loaded, "loaded"
        if loaded is not None and loaded.version < current:
            n = loaded.catch_up(catalog)
            loaded.save(folder)
            return loaded, f"caught up ({n} vectors)"
        why = "missing or unreadable" if loaded is None else "ahead of the catalog"
        index = cls.build(catalog, space)
        index.save(folder)
        return index, f"rebuilt ({why})"
