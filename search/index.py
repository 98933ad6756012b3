"""FAISS index of one embedding space: inner product over L2-normalised vectors.

Kinds: "flat" (default): exact, `IndexIDMap2(IndexFlatIP)`; "ivf": approximate,
`IndexIVFFlat` trained on the space's vectors, for large galleries (a query scans `nprobe` of
~4·sqrt(N) lists); "auto": flat below AUTO_IVF_FROM vectors, ivf above.

The catalog is the source of truth; the index file is a cache of it. A sidecar JSON records
the catalog version of the space the file was built from (and its kind); a missing, stale,
unreadable or other-kind file is rebuilt from the catalog, a merely behind one caught up.
"""
from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import faiss
import numpy as np

from .catalog import Catalog
from models.fsutil import atomic_write_bytes


KINDS = ("flat", "ivf", "auto")
AUTO_IVF_FROM = 50_000
IVF_MIN = 10_000  # below this an IVF index is not worth its training
DEFAULT_NPROBE = 32


def _safe(space: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", space)


def effective_kind(kind: str, n: int) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose from {', '.join(KINDS)}")
    if kind == "auto":
        return "ivf" if n >= AUTO_IVF_FROM else "flat"
    return "ivf" if kind == "ivf" and n >= IVF_MIN else "flat"


def train_ivf(vectors: np.ndarray, nprobe: int = DEFAULT_NPROBE, seed: int = 0) -> faiss.Index:
    n, dim = vectors.shape
    nlist = int(min(max(64, 4 * np.sqrt(n)), n / 39, 16384))  # faiss wants >= 39 points a list
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = 10  # k-means iterations: enough for retrieval, 2.5x cheaper than the default
    rng = np.random.default_rng(seed)
    sample = vectors[rng.choice(n, size=min(n, 40 * nlist), replace=False)]
    ivf.train(np.ascontiguousarray(sample))
    ivf.nprobe = nprobe
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct(id) and remove by id
    return ivf  # faiss's Python wrapper keeps `quantizer` referenced from `ivf`


class SpaceIndex:
    def __init__(self, space: str, dim: int, index: faiss.Index | None = None, version: int = 0,
                 kind: str = "flat"):
        self.space = space
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.version = version  # catalog space version this index reflects
        self.kind = kind

    def ids(self) -> np.ndarray:
        if self.kind == "flat":
            return faiss.vector_to_array(self.index.id_map)
        invlists = self.index.invlists
        return np.concatenate([faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
                               for i in range(invlists.nlist)] or [np.zeros(0, np.int64)])

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.index.ntotal:
            # IVF's hashtable direct map removes only by an explicit id array
            selector = (faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids)) if self.kind == "ivf"
                        else faiss.IDSelectorBatch(ids))
            self.index.remove_ids(selector)
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)

    def vectors(self, ids) -> np.ndarray:
        """The indexed vectors of these image ids (flat and IVF alike)."""
        return np.stack([self.index.reconstruct(int(i)) for i in ids]) if len(ids) else \
            np.zeros((0, self.dim), np.float32)

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
        data = faiss.serialize_index(self.index).tobytes()
        atomic_write_bytes(index_path, data)
        meta = {"space": self.space, "dim": self.dim, "version": self.version,
                "ntotal": int(self.index.ntotal), "kind": self.kind, "bytes": len(data),
                "crc32": zlib.crc32(data)}
        atomic_write_bytes(meta_path, json.dumps(meta).encode())

    @staticmethod
    def _read(folder: Path, space: str) -> tuple[dict, bytes, str | None]:
        """(sidecar, file bytes, why they cannot be trusted or None). Flipped bytes load "fine"
        in faiss and give wrong results, so the file must match its sidecar's checksum (files
        written before checksums are checked as far as the load can)."""
        index_path, meta_path = SpaceIndex.paths(folder, space)
        try:
            meta = json.loads(meta_path.read_text())
            raw = index_path.read_bytes()
        except FileNotFoundError:
            return {}, b"", "missing"
        except (OSError, ValueError) as e:
            return {}, b"", f"unreadable ({e})"
        if "crc32" in meta and (len(raw) != meta.get("bytes") or zlib.crc32(raw) != meta["crc32"]):
            return meta, raw, "damaged (checksum mismatch)"
        return meta, raw, None

    @staticmethod
    def verify(folder: Path, space: str) -> str | None:
        """Why the saved index file of `space` cannot be trusted, or None."""
        return SpaceIndex._read(folder, space)[2]

    @classmethod
    def load(cls, folder: Path, space: str) -> "SpaceIndex | None":
        meta, raw, why = cls._read(folder, space)
        if why is not None:
            return None
        try:
            index = faiss.deserialize_index(np.frombuffer(raw, dtype=np.uint8))
        except (RuntimeError, ValueError):
            return None
        if meta.get("space") != space or index.ntotal != meta.get("ntotal") or index.d != meta.get("dim"):
            return None
        # An IVF index's file keeps its hashtable direct map. (Re-wrapping the deserialised
        # index with downcast_index would leave the original wrapper to free it.)
        return cls(space, meta["dim"], index, meta["version"], meta.get("kind", "flat"))

    @classmethod
    def build(cls, catalog: Catalog, space: str, kind: str = "flat",
              nprobe: int = DEFAULT_NPROBE) -> "SpaceIndex":
        with catalog.snapshot():
            dim = catalog.space_dim(space)
            if dim is None:
                raise KeyError(f"no vectors in space {space!r}")
            version = catalog.space_version(space)
            chunks = list(catalog.serving_vectors(space))
        n = sum(len(ids) for ids, _ in chunks)
        if effective_kind(kind, n) == "ivf":
            all_vectors = np.concatenate([v for _, v in chunks])
            index = cls(space, dim, train_ivf(all_vectors, nprobe), version, "ivf")
            del all_vectors
        else:
            index = cls(space, dim, version=version)
        for ids, vectors in chunks:
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
    def open(cls, catalog: Catalog, folder: Path, space: str, kind: str = "flat"
             ) -> tuple["SpaceIndex", str]:
        """Load the saved index if it is current, else rebuild it; says which it did."""
        loaded = cls.load(folder, space)
        if loaded is not None and kind != "auto" and effective_kind(kind, loaded.ntotal) != loaded.kind:
            loaded = None  # another kind was asked for: rebuild
        current = catalog.space_version(space)
        if loaded is not None and loaded.version == current:
            return loaded, "loaded"
        if loaded is not None and loaded.version < current:
            n = loaded.catch_up(catalog)
            loaded.save(folder)
            return loaded, f"caught up ({n} vectors)"
        why = (cls.verify(folder, space) or "of another kind") if loaded is None else "ahead of the catalog"
        index = cls.build(catalog, space, kind)
        index.save(folder)
        return index, f"rebuilt ({why})"
