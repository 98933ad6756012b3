"""FAISS index of one embedding space: inner product over L2-normalised vectors.

Kinds: "flat" (default): exact, `IndexIDMap2(IndexFlatIP)`; "ivf": approximate,
`IndexIVFFlat` trained on the space's vectors, for large galleries (a query scans `nprobe` of
~4·sqrt(N) lists); compressed, for very large galleries in little memory: "sq8" (IVF + 8-bit
scalar quantisation, 1 byte per dimension) and "pq" (IVF + product quantisation, 1 byte per 8
dimensions), each answering with a short list re-ranked exactly against the stored vectors in
the catalog; "auto": flat below AUTO_IVF_FROM vectors, ivf up to AUTO_PQ_FROM, pq above.

The catalog is the source of truth; the index file is a cache of it. A sidecar JSON records
the catalog version of the space the file was built from (and its kind); a missing, stale,
unreadable or other-kind file is rebuilt from the catalog, a merely behind one caught up.
"""
from __future__ import annotations

import json
import re
import zlib
from pathlib import Path
from typing import Callable

import faiss
import numpy as np

from models.fsutil import atomic_write_bytes, remove_stale_temp_files

from search.storage.catalog import Catalog

KINDS = ("flat", "ivf", "sq8", "pq", "auto")
COMPRESSED = ("sq8", "pq")
AUTO_IVF_FROM = 50_000
AUTO_PQ_FROM = 250_000  # ivf holds 5 KiB per 1280-d vector: ~1.2 GiB here; pq 0.2 KiB
IVF_MIN = 10_000  # below this an IVF index is not worth its training
DEFAULT_NPROBE = 32
COMPRESSED_NPROBE = 16
RERANK_MIN, RERANK_FACTOR = 160, 16  # short list = max(160, 16·k) candidates, re-ranked exactly
TRAIN_SAMPLE = 65_536  # training vectors for the coarse quantiser and the codebooks


def _safe(space: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", space)


def effective_kind(kind: str, n: int) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose from {', '.join(KINDS)}")
    if kind == "auto":
        return "pq" if n >= AUTO_PQ_FROM else "ivf" if n >= AUTO_IVF_FROM else "flat"
    return kind if kind != "flat" and n >= IVF_MIN else "flat"


def train_compressed(vectors: np.ndarray, kind: str, n: int, seed: int = 0) -> faiss.Index:
    """An empty IVF-SQ8 or IVF-PQ index trained on `vectors` (a sample of the `n` to come)."""
    dim = vectors.shape[1]
    nlist = int(min(max(64, np.sqrt(n)), len(vectors) / 39, 16384))
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "sq8":
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
    else:
        m = next(m for m in (dim // 8, dim // 4, dim // 2, dim) if dim % m == 0)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10
    index.train(np.ascontiguousarray(vectors, dtype=np.float32))
    index.nprobe = COMPRESSED_NPROBE
    index.set_direct_map_type(faiss.DirectMap.Hashtable)
    return index


def ivf_lists(n: int) -> int:
    """~4·sqrt(N) lists (faiss wants >= 39 training points a list); Milvus uses the same."""
    return int(min(max(64, 4 * np.sqrt(n)), n / 39, 16384))


def train_ivf(vectors: np.ndarray, nprobe: int = DEFAULT_NPROBE, seed: int = 0,
              nlist: int | None = None) -> faiss.Index:
    """An empty IVF-Flat index trained on `vectors` (all of them, or a sample of the N to come:
    then pass `nlist` = ivf_lists(N))."""
    n, dim = vectors.shape
    nlist = min(nlist or ivf_lists(n), max(1, n // 39))
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = 10  # k-means iterations: enough for retrieval, 2.5x cheaper than the default
    rng = np.random.default_rng(seed)
    sample = vectors[rng.choice(n, size=min(n, 40 * nlist), replace=False)]
    ivf.train(np.ascontiguousarray(sample))
    ivf.nprobe = nprobe
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct(id) and remove by id
    return ivf  # faiss's Python wrapper keeps `quantizer` referenced from `ivf`


def training_sample(catalog: Catalog, space: str, n: int, size: int) -> np.ndarray:
    """An evenly spaced sample of `size` of the space's `n` serving vectors (one pass)."""
    step = max(1, n // max(1, size))
    picked, seen = [], 0
    for _, vectors in catalog.vectors.serving_vectors(space):
        first = (-seen) % step
        picked.append(vectors[first::step].copy())
        seen += len(vectors)
    return np.concatenate(picked)[:size] if picked else np.zeros((0, catalog.vectors.space_dim(space) or 0))


class SpaceIndex:
    def __init__(self, space: str, dim: int, index: faiss.Index | None = None, version: int = 0,
                 kind: str = "flat"):
        self.space = space
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.version = version  # catalog space version this index reflects
        self.kind = kind
        # compressed kinds: image ids -> their exact stored vectors (set by whoever opens it)
        self.stored: Callable[[list[int]], dict[int, np.ndarray]] | None = None
        self.interim: str | None = None  # why this serves in place of the setting's index

    def ids(self) -> np.ndarray:
        if self.kind == "flat":
            return faiss.vector_to_array(self.index.id_map)
        invlists = self.index.invlists
        return np.concatenate([faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
                               for i in range(invlists.nlist)] or [np.zeros(0, np.int64)])

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def upsert(self, ids: np.ndarray, vectors: np.ndarray, models=None, seqs=None) -> None:
        """Add or replace vectors by image id (`models`/`seqs` are for stores that keep them)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self.remove(ids)
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)

    def remove(self, ids) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.index.ntotal and len(ids):
            # IVF's hashtable direct map removes only by an explicit id array
            selector = (faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids)) if self.kind != "flat"
                        else faiss.IDSelectorBatch(ids))
            self.index.remove_ids(selector)

    def vectors(self, ids) -> np.ndarray:
        """The vectors of these image ids (exact ones from the catalog for compressed kinds)."""
        if not len(ids):
            return np.zeros((0, self.dim), np.float32)
        if self.kind in COMPRESSED and self.stored is not None:
            found = self.stored([int(i) for i in ids])
            return np.stack([found[int(i)] for i in ids])
        return np.stack([self.index.reconstruct(int(i)) for i in ids])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(k, self.index.ntotal)) if self.index.ntotal else 0
        if k == 0:
            n = len(queries)
            return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
        if self.kind not in COMPRESSED or self.stored is None:
            return self.index.search(queries, k)
        # approximate codes pick a short list; the stored vectors rank it exactly
        short = min(self.index.ntotal, max(RERANK_MIN, RERANK_FACTOR * k))
        _, candidates = self.index.search(queries, short)
        wanted = sorted({int(i) for i in candidates.ravel() if i >= 0})
        found = self.stored(wanted)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        for q, row in enumerate(candidates):
            row = [int(i) for i in row if i >= 0 and int(i) in found]
            if not row:
                continue
            exact = np.stack([found[i] for i in row]) @ queries[q]
            top = np.argsort(-exact)[:k]
            scores[q, :len(top)], ids[q, :len(top)] = exact[top], np.asarray(row)[top]
        return scores, ids

    # -- persistence ----------------------------------------------------------------------
    @staticmethod
    def paths(folder: Path, space: str) -> tuple[Path, Path]:
        base = Path(folder) / _safe(space)
        return base.with_suffix(".faiss"), base.with_suffix(".json")

    def save(self, folder: Path) -> None:
        index_path, meta_path = self.paths(folder, self.space)
        # Index first, sidecar last: a crash in between leaves a sidecar that does not match.
        data = faiss.serialize_index(self.index)  # a uint8 array, written without another copy
        atomic_write_bytes(index_path, data)
        meta = {"space": self.space, "dim": self.dim, "version": self.version,
                "ntotal": int(self.index.ntotal), "kind": self.kind, "bytes": int(data.size),
                "crc32": zlib.crc32(data)}
        atomic_write_bytes(meta_path, json.dumps(meta).encode())

    @staticmethod
    def _read(folder: Path, space: str) -> tuple[dict, str | None]:
        """(sidecar, why the file cannot be trusted or None). Flipped bytes load "fine" in
        faiss and give wrong results, so the file must match its sidecar's checksum (files
        written before checksums are checked as far as the load can). The checksum is computed
        in chunks: a compressed index of a million photos is a gigabyte."""
        index_path, meta_path = SpaceIndex.paths(folder, space)
        try:
            meta = json.loads(meta_path.read_text())
            crc, size = 0, 0
            with open(index_path, "rb") as f:
                while chunk := f.read(1 << 24):
                    crc, size = zlib.crc32(chunk, crc), size + len(chunk)
        except FileNotFoundError:
            return {}, "missing"
        except (OSError, ValueError) as e:
            return {}, f"unreadable ({e})"
        if "crc32" in meta and (size != meta.get("bytes") or crc != meta["crc32"]):
            return meta, "damaged (checksum mismatch)"
        return meta, None

    @staticmethod
    def verify(folder: Path, space: str) -> str | None:
        """Why the saved index file of `space` cannot be trusted, or None."""
        return SpaceIndex._read(folder, space)[1]

    @classmethod
    def load(cls, folder: Path, space: str) -> "SpaceIndex | None":
        meta, why = cls._read(folder, space)
        if why is not None:
            return None
        try:  # straight from the file: no second copy of its bytes in memory
            index = faiss.read_index(str(cls.paths(folder, space)[0]))
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
        """Two streaming passes over the catalog (a training sample, then every vector), so a
        compressed index of a large gallery is built without holding its float32 vectors."""
        with catalog.snapshot():
            dim = catalog.vectors.space_dim(space)
            if dim is None:
                raise KeyError(f"no vectors in space {space!r}")
            version = catalog.vectors.space_version(space)
            n = catalog.vectors.count_served(space)
            built = effective_kind(kind, n)
            # (the training sample is dropped before every vector is added)
            if built == "ivf":
                sample = training_sample(catalog, space, n, min(n, 40 * ivf_lists(n)))
                index = cls(space, dim, train_ivf(sample, nprobe, nlist=ivf_lists(n)), version,
                            "ivf")
                del sample
            elif built in COMPRESSED:
                sample = training_sample(catalog, space, n, min(n, TRAIN_SAMPLE))
                index = cls(space, dim, train_compressed(sample, built, n), version, built)
                del sample
            else:
                index = cls(space, dim, version=version)
            for ids, vectors in catalog.vectors.serving_vectors(space):
                index.index.add_with_ids(vectors, ids)
        return index

    def catch_up(self, catalog: Catalog) -> int:
        """Apply the vectors written since this index's version (by any process)."""
        with catalog.snapshot():
            version = catalog.vectors.space_version(space := self.space)
            n = 0
            for ids, vectors in catalog.vectors.serving_vectors(space, after_seq=self.version):
                self.upsert(ids, vectors)
                n += len(ids)
            self.version = version
        return n

    @classmethod
    def open(cls, catalog: Catalog, folder: Path, space: str, kind: str = "flat",
             build: bool = True) -> tuple["SpaceIndex", str]:
        """Load the saved index if it is current, else rebuild it; says which it did.
        `build=False` (a read) never trains: a saved index of another kind serves as it is, and
        when the setting wants a trained kind (ivf, sq8, pq) a missing, damaged or ahead file
        is replaced by an exact flat index built from the catalog in memory (`interim` says
        why; never saved), leaving the rebuild to `reindex` / `check --repair` / a write."""
        loaded = cls.load(folder, space)
        if loaded is not None and kind != "auto" and effective_kind(kind, loaded.ntotal) != loaded.kind:
            if build:
                loaded = None  # another kind was asked for: rebuild
            else:
                loaded.interim = f"{loaded.kind}, not {kind}"
        current = catalog.vectors.space_version(space)
        if loaded is not None and loaded.version == current:
            return loaded, "loaded"
        if loaded is not None and loaded.version < current:
            n = loaded.catch_up(catalog)
            loaded.save(folder)
            return loaded, f"caught up ({n} vectors)"
        why = (cls.verify(folder, space) or "of another kind") if loaded is None else "ahead of the catalog"
        if not build and effective_kind(kind, catalog.vectors.count_served(space)) != "flat":
            return interim_flat(catalog, space, why), f"serving ({why})"
        index = cls.build(catalog, space, kind)
        index.save(folder)
        return index, f"rebuilt ({why})"


def interim_flat(catalog: Catalog, space: str, why: str) -> SpaceIndex:
    """An exact flat index of `space` built from the catalog in memory (seconds at 100k: no
    training), serving a read while the index the setting asks for is missing or unusable."""
    index = SpaceIndex.build(catalog, space, "flat")
    index.interim = why
    return index


class FaissStore:
    """The default vector store: one FAISS index file per space in the gallery's index/ folder,
    held in this process's memory."""

    kind = "faiss"
    noun = "index file"  # what holds one space's vectors, in messages

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def describe(self) -> dict:
        return {"kind": self.kind, "path": str(self.folder)}

    def open(self, catalog: Catalog, space: str, kind: str, build: bool = True
             ) -> tuple[SpaceIndex, str]:
        index, how = SpaceIndex.open(catalog, self.folder, space, kind, build)
        remove_stale_temp_files(self.folder)  # left by a save that was killed
        return self._rerank_from(index, catalog), how

    def build(self, catalog: Catalog, space: str, kind: str) -> SpaceIndex:
        return self._rerank_from(SpaceIndex.build(catalog, space, kind), catalog)

    @staticmethod
    def _rerank_from(index: SpaceIndex, catalog: Catalog) -> SpaceIndex:
        index.stored = lambda ids: catalog.vectors.serving_vectors_of(ids, index.space)
        return index

    def save(self, index: SpaceIndex, catalog: Catalog) -> None:
        index.save(self.folder)
        remove_stale_temp_files(self.folder)

    def verify(self, catalog: Catalog, space: str) -> str | None:
        """Why the saved index of `space` cannot serve as it is (None: fine or merely behind)."""
        loaded = SpaceIndex.load(self.folder, space)
        if loaded is None:
            return SpaceIndex.verify(self.folder, space) or "unreadable"
        version, kind = catalog.vectors.space_version(space), catalog.state.index_kind()
        if loaded.version > version:
            return "ahead of the catalog"
        if kind != "auto" and effective_kind(kind, loaded.ntotal) != loaded.kind:
            return f"{loaded.kind}, not {kind} as set (a reindex did not finish)"
        served = catalog.vectors.count_served(space)
        if loaded.version == version and loaded.ntotal != served:
            return f"holds {loaded.ntotal} vectors, the catalog serves {served}"
        return None

    def close(self) -> None:
        pass
