"""Which vector store serves a gallery's searches, chosen when the gallery is created.

`faiss` (default): index files in the gallery's index/ folder, in this process's memory.
`milvus`: one Milvus collection per space (search.milvus_store), a Milvus Lite file inside
the gallery by default or any Milvus server / cluster URI. Both are copies of the catalog's
serving vectors, so either can be rebuilt from it at any time.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from models.settings import Settings

from search.errors import GalleryError
from search.storage.catalog import Catalog

STORES = ("faiss", "milvus")
DEFAULT_MILVUS_FILE = "milvus.db"


class SpaceVectors(Protocol):
    """What the engine needs of the served vectors of one space (FAISS index or collection)."""

    space: str
    dim: int
    version: int
    kind: str

    @property
    def ntotal(self) -> int: ...
    def ids(self) -> np.ndarray: ...
    def vectors(self, ids) -> np.ndarray: ...
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def upsert(self, ids, vectors, models=None, seqs=None) -> None: ...
    def remove(self, ids) -> None: ...
    def catch_up(self, catalog: Catalog) -> int: ...


class VectorStore(Protocol):
    kind: str
    noun: str  # what holds one space's vectors, in messages ("index file")

    def describe(self) -> dict: ...
    def open(self, catalog: Catalog, space: str, kind: str, build: bool = True
             ) -> tuple[SpaceVectors, str]: ...
    def build(self, catalog: Catalog, space: str, kind: str) -> SpaceVectors: ...
    def save(self, index: Any, catalog: Catalog) -> None: ...  # index: this store's own SpaceVectors
    def verify(self, catalog: Catalog, space: str) -> str | None: ...
    def close(self) -> None: ...


def store_config(kind: str, home: Path, milvus_uri: str | None = None) -> dict:
    """The catalog record of a store choice. A Milvus Lite file inside the gallery is kept
    relative to it, so the gallery folder can move."""
    if kind not in STORES:
        raise GalleryError(f"unknown vector store {kind!r}; choose from {', '.join(STORES)}")
    if kind == "faiss":
        if milvus_uri:
            raise GalleryError("--milvus-uri goes with --store milvus")
        return {"kind": "faiss"}
    from search.storage.milvus_lite import is_local

    uri = milvus_uri or DEFAULT_MILVUS_FILE
    if is_local(uri):
        base = Path(home) if milvus_uri is None else Path.cwd()
        path = (base / Path(uri).expanduser()).resolve()
        if not path.name.endswith(".db"):
            raise GalleryError(f"a Milvus Lite file name must end in .db (got {path.name}); "
                               "a server is given as http://HOST:19530")
        try:
            uri = str(path.relative_to(Path(home).resolve()))
        except ValueError:
            uri = str(path)
    return {"kind": "milvus", "uri": uri}


def open_store(home: Path, catalog: Catalog, settings: Settings | None = None) -> VectorStore:
    config = catalog.state.vector_store() or {"kind": "faiss"}
    if config["kind"] == "milvus":
        from search.storage.milvus_lite import is_local
        from search.storage.milvus_store import MilvusStore

        uri = config["uri"]
        if is_local(uri) and not Path(uri).is_absolute():
            uri = str(Path(home) / uri)
        settings = settings or Settings.from_env()
        return MilvusStore(uri, catalog.state.gallery_id(), settings.milvus_consistency)
    from search.storage.faiss_index import FaissStore

    return FaissStore(Path(home) / "index")


def open_notice(noun: str, space: str, how: str, index: SpaceVectors) -> str | None:
    """The one-line note for what opening a space's vectors did (None: nothing to say). A read
    serving an interim index says so and names what rebuilds the real one."""
    interim = getattr(index, "interim", None)
    if interim:
        what = ("searching it as it is" if not how.startswith("serving") else
                "searching an exact index built from the catalog in memory meanwhile")
        return (f"the {space} {noun} is {interim}: {what}; graceful reindex (or graceful check "
                "--repair) rebuilds it as set")
    if how.startswith("rebuilt") and "missing" not in how:
        return f"the {space} {noun} was {how[len('rebuilt ('):-1]}: rebuilt it from the catalog"
    return None
