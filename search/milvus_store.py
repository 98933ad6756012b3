"""Milvus as the vector store: one collection per space, through pymilvus.

The same code serves a Milvus Lite file (`URI` ending in .db: in-process, one process at a
time; what the tests and the quick start use) and a Milvus server or cluster
(`http://host:19530`, token from GRACEFUL_MILVUS_TOKEN). The catalog stays the source of
truth: a collection is a copy of the serving vectors of its space, written after each catalog
commit (upserts by image id, so repeating a write is harmless). What a collection holds is
recorded in the catalog (`store_synced`: the space version it reflects) when a job ends; on
open a collection that is behind is caught up, and one that is missing, of another index kind,
ahead of the catalog or of the wrong size is rebuilt from the catalog.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import threading
import zlib
from pathlib import Path

import numpy as np

from .catalog import Catalog
from .errors import GalleryError
from .index import DEFAULT_NPROBE, effective_kind, ivf_lists

TOKEN_ENV = "GRACEFUL_MILVUS_TOKEN"
WRITE_ROWS = 2000  # rows per upsert: 1280-d float32 rows stay far below gRPC's message limit
READ_ROWS = 1000  # ids per get, queries per search call
MAX_LIMIT = 16384  # Milvus caps top-k


def _said(method):
    """Errors from Milvus (a server gone, a collection dropped mid-call, a bad value) become one
    GalleryError line naming the Milvus, instead of a traceback."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except GalleryError:
            raise
        except Exception as e:
            try:
                from pymilvus.exceptions import MilvusException
            except ImportError:  # pragma: no cover
                raise e from None
            if not isinstance(e, MilvusException):
                raise
            text = str(getattr(e, "message", "") or e).splitlines()[0]
            raise GalleryError(f"Milvus at {self.uri}: {text}") from None
    return wrapper


def milvus_kind(kind: str, n: int) -> str:
    """The index kind a collection gets: FLAT, or IVF_FLAT for every approximate kind (Milvus
    Lite has no IVF_SQ8 / IVF_PQ; a server's could take over sq8 / pq later)."""
    built = effective_kind(kind, n)
    return "flat" if built == "flat" else "ivf"


def is_local(uri: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*://", uri)


def collection_name(gallery_id: str, space: str) -> str:
    """Milvus names allow letters, digits and _; the checksum keeps distinct spaces distinct."""
    safe = re.sub(r"[^A-Za-z0-9_]+", "_", space)[:120]
    return f"graceful_{gallery_id}_{safe}_{zlib.crc32(space.encode()):08x}"


class MilvusSpace:
    """The vectors of one space in one collection; the same surface as search.index.SpaceIndex."""

    def __init__(self, client, collection: str, space: str, dim: int, version: int, kind: str,
                 uri: str = ""):
        self.client = client
        self.uri = uri
        self.collection = collection
        self.space = space
        self.dim = dim
        self.version = version
        self.kind = kind

    # -- reads ----------------------------------------------------------------------------
    @property
    @_said
    def ntotal(self) -> int:
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    @_said
    def ids(self) -> np.ndarray:
        out = []
        it = self.client.query_iterator(self.collection, batch_size=10000, filter="id >= 0",
                                        output_fields=["id"])
        try:
            while batch := it.next():
                out.extend(r["id"] for r in batch)
        finally:
            it.close()
        return np.array(sorted(out), dtype=np.int64)

    @_said
    def vectors(self, ids) -> np.ndarray:
        ids = [int(i) for i in ids]
        if not ids:
            return np.zeros((0, self.dim), np.float32)
        by_id = {}
        for start in range(0, len(ids), READ_ROWS):
            rows = self.client.get(self.collection, ids=ids[start:start + READ_ROWS],
                                   output_fields=["vector"])
            by_id.update({int(r["id"]): r["vector"] for r in rows})
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise KeyError(f"image ids not in the {self.space} collection: {missing[:5]}")
        return np.asarray([by_id[i] for i in ids], dtype=np.float32)

    @_said
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(k, MAX_LIMIT))
        params = {"metric_type": "IP", "params": {"nprobe": DEFAULT_NPROBE}}
        found = []
        for start in range(0, len(queries), READ_ROWS):
            found += self.client.search(self.collection, data=list(queries[start:start + READ_ROWS]),
                                        limit=k, search_params=params, output_fields=[])
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        width = 0
        for q, hits in enumerate(found):
            for r, hit in enumerate(hits):
                scores[q, r] = hit["distance"]
                ids[q, r] = hit["id"]
            width = max(width, len(hits))
        return scores[:, :width], ids[:, :width]

    # -- writes ---------------------------------------------------------------------------
    @_said
    def upsert(self, ids, vectors, models=None, seqs=None) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.asarray(vectors, dtype=np.float32)
        n = len(ids)
        models = list(models) if models is not None else [""] * n
        seqs = np.asarray(seqs, np.int64) if seqs is not None else np.full(n, self.version + 1)
        for start in range(0, n, WRITE_ROWS):
            end = min(n, start + WRITE_ROWS)
            self.client.upsert(self.collection, [
                {"id": int(ids[i]), "vector": vectors[i], "model": models[i][:255],
                 "seq": int(seqs[i])}
                for i in range(start, end)])

    @_said
    def remove(self, ids) -> None:
        ids = [int(i) for i in ids]
        if ids:
            self.client.delete(self.collection, ids=ids)

    @_said
    def catch_up(self, catalog: Catalog) -> int:
        """Apply the vectors written since this collection's version (by any process)."""
        with catalog.snapshot():
            version = catalog.space_version(self.space)
            synced = catalog.store_synced(self.space) or {}
            after = max(self.version, synced.get("version", 0) if synced.get("kind") == self.kind else 0)
            n = 0
            for chunk in catalog.serving_rows(self.space, after_seq=after):
                self.upsert(chunk.ids, chunk.vectors, chunk.models, chunk.seqs)
                n += len(chunk.ids)
        self.version = version
        return n


class MilvusStore:
    """Collections of one gallery in one Milvus (Lite file, server or cluster)."""

    kind = "milvus"
    noun = "Milvus collection"  # what holds one space's vectors, in messages

    def __init__(self, uri: str, gallery_id: str):
        self.uri = uri
        self.gallery_id = gallery_id
        self._client = None

    def describe(self) -> dict:
        return {"kind": self.kind, "uri": self.uri,
                "mode": "milvus-lite (one process at a time)" if is_local(self.uri) else "server"}

    @property
    def client(self):
        if self._client is None:
            self._client = connect(self.uri)
        return self._client

    def close(self) -> None:
        if self._client is None:
            return
        try:
            self._client.close()
        finally:
            self._client = None
            if is_local(self.uri):
                _release_lite(self.uri)

    def collection(self, space: str) -> str:
        return collection_name(self.gallery_id, space)

    # -- the store interface (as search.index.FaissStore) ---------------------------------
    @_said
    def open(self, catalog: Catalog, space: str, kind: str) -> tuple[MilvusSpace, str]:
        """The collection of `space`, caught up or rebuilt to agree with the catalog."""
        why = self._why_not_current(catalog, space, kind)
        if why is not None:
            return self.build(catalog, space, kind), f"rebuilt ({why})"
        synced = catalog.store_synced(space)
        name = self.collection(space)
        self.client.load_collection(name)
        idx = MilvusSpace(self.client, name, space, catalog.space_dim(space), synced["version"],
                          synced["kind"], self.uri)
        if idx.version == catalog.space_version(space):
            return idx, "loaded"
        n = idx.catch_up(catalog)
        self.save(idx, catalog)
        return idx, f"caught up ({n} vectors)"

    def _why_not_current(self, catalog: Catalog, space: str, kind: str) -> str | None:
        name = self.collection(space)
        synced = catalog.store_synced(space)
        if not self.client.has_collection(name):
            return "missing"
        if synced is None:
            return "not known to match the catalog"
        if kind != "auto" and milvus_kind(kind, catalog.count_served(space)) != synced.get("kind"):
            return "of another kind"
        if synced["version"] > catalog.space_version(space):
            return "ahead of the catalog"
        self.client.load_collection(name)
        held = MilvusSpace(self.client, name, space, 0, 0, "", self.uri).ntotal
        expected = catalog.count_served(space)
        if synced["version"] == catalog.space_version(space) and held != expected:
            return f"holding {held} vectors, the catalog serves {expected}"
        return None

    @_said
    def build(self, catalog: Catalog, space: str, kind: str) -> MilvusSpace:
        from pymilvus import DataType, MilvusClient

        dim = catalog.space_dim(space)
        if dim is None:
            raise KeyError(f"no vectors in space {space!r}")
        name = self.collection(space)
        catalog.set_store_synced(space, None)  # until the rebuild is complete
        if self.client.has_collection(name):
            self.client.drop_collection(name)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("model", DataType.VARCHAR, max_length=256)
        schema.add_field("seq", DataType.INT64)
        # Strong: a search right after a write (or a catch-up by another process) sees it.
        self.client.create_collection(name, schema=schema, consistency_level="Strong")
        with catalog.snapshot():
            version = catalog.space_version(space)
            n = catalog.count_served(space)
            built = milvus_kind(kind, n)
            idx = MilvusSpace(self.client, name, space, dim, version, built, self.uri)
            for chunk in catalog.serving_rows(space, batch=WRITE_ROWS):
                idx.upsert(chunk.ids, chunk.vectors, chunk.models, chunk.seqs)
        params = self.client.prepare_index_params()
        if built == "ivf":
            nlist = ivf_lists(n)
            params.add_index(field_name="vector", index_type="IVF_FLAT", metric_type="IP",
                             params={"nlist": nlist})
        else:
            params.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
        self.client.create_index(name, params)
        self.client.load_collection(name)
        self.save(idx, catalog)
        return idx

    @_said
    def save(self, index: MilvusSpace, catalog: Catalog) -> None:
        """Record what the collection now holds (after Milvus has persisted the writes)."""
        self.client.flush(index.collection)
        catalog.set_store_synced(index.space, {"version": index.version, "kind": index.kind})

    @_said
    def verify(self, catalog: Catalog, space: str) -> str | None:
        kind = (catalog.store_synced(space) or {}).get("kind", "auto")
        return self._why_not_current(catalog, space, kind)


_lite_users: dict[str, int] = {}  # open clients per Milvus Lite file in this process
_lite_lock = threading.Lock()  # held across wait + connect + count, and uncount + release


def _release_lite(uri: str) -> None:
    """Stop the in-process Milvus Lite server of `uri` when its last client closes, so that the
    file's lock goes back (another process may open the gallery then)."""
    key = os.path.abspath(uri)
    with _lite_lock:
        _lite_users[key] = _lite_users.get(key, 1) - 1
        if _lite_users[key] > 0:
            return
        del _lite_users[key]
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(key)


def connect(uri: str):
    """A MilvusClient for `uri`, with the errors a user can act on said in one line."""
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise GalleryError("this gallery keeps its vectors in Milvus: install the extra "
                           "(pip install 'graceful[milvus]')") from None
    local = is_local(uri)
    if local:
        try:
            import milvus_lite  # noqa: F401
        except ImportError:
            raise GalleryError("a Milvus Lite file needs milvus-lite: pip install "
                               "'graceful[milvus]'") from None
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    for name in ("pymilvus", "milvus_lite"):  # quiet library defaults; errors are said below
        logging.getLogger(name).setLevel(logging.CRITICAL)
    with (_lite_lock if local else contextlib.nullcontext()):
        key = os.path.abspath(uri)
        if local and key not in _lite_users:
            _wait_for_lite_lock(uri)
        try:
            client = MilvusClient(uri=uri, token=os.environ.get(TOKEN_ENV, ""))
        except Exception as e:  # pymilvus raises its own types, or a bare one from milvus-lite
            text = str(e).splitlines()[0] if str(e) else repr(e)
            if local:
                raise GalleryError(f"cannot open the Milvus Lite file {uri} ({text})") from None
            raise GalleryError(f"cannot reach Milvus at {uri}: {text}") from None
        if local:
            _lite_users[key] = _lite_users.get(key, 0) + 1
    return client


def _wait_for_lite_lock(uri: str) -> None:
    """Milvus Lite lets one process at a time open a file. Wait for another process to let go
    as long as a busy catalog is waited for, then say so. (Called with _lite_lock held, when
    this process does not hold the file.)"""
    import fcntl
    import time

    from .catalog import db_timeout

    lock = Path(os.path.abspath(uri)) / "LOCK"
    if not lock.exists():
        return
    deadline = time.monotonic() + db_timeout()
    while True:
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise GalleryError(
                    f"the gallery's Milvus Lite file {uri} is open in another process (Milvus "
                    "Lite serves one process at a time): close the app or the other command "
                    "using this gallery, or serve the gallery from a Milvus server "
                    "(graceful reindex --store milvus --milvus-uri http://HOST:19530)") from None
            time.sleep(0.2)
        finally:
            os.close(fd)
