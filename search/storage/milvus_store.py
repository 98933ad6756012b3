"""Milvus as the vector store: one collection per space, through pymilvus.

The same code serves a Milvus Lite file (`URI` ending in .db: in-process, one process at a
time; what the tests and the quick start use) and a Milvus server or cluster
(`http://host:19530`, token from GRACEFUL_MILVUS_TOKEN). The catalog stays the source of
truth: a collection is a copy of the serving vectors of its space, written after each catalog
commit (upserts by image id, so repeating a write is harmless). What a collection holds is
recorded in the catalog (`store_synced`: the space version it reflects) when a job ends; on
open a collection that is behind is caught up, and one that is missing, of another index kind,
ahead of the catalog or of the wrong size is rebuilt from the catalog (by a write; a read serves
an exact in-memory index meanwhile). Searches use GRACEFUL_MILVUS_CONSISTENCY (default Session:
this process's writes are seen at once; another process's are caught up from the catalog by
this process's upserts before its next search, or seen by Milvus within its grace time).
"""
from __future__ import annotations

import functools
import os
import re
import zlib
from pathlib import Path

import numpy as np

from search.errors import GalleryError
from search.storage import milvus_lite
from search.storage.catalog import Catalog
from search.storage.faiss_index import (
    DEFAULT_NPROBE,
    SpaceIndex,
    effective_kind,
    interim_flat,
    ivf_lists,
)
from search.storage.milvus_lite import LiteDamaged, _release_lite, connect, is_local

WRITE_ROWS = 2000  # rows per upsert: 1280-d float32 rows stay far below gRPC's message limit
READ_ROWS = 1000  # ids per get, queries per search call
MAX_LIMIT = 16384  # Milvus caps top-k
SELF_SEARCH_SAMPLE = 4096  # served vectors `check` searches for (all of them up to this many)


def _said(method):
    """Errors from Milvus (a server gone, a collection dropped mid-call, a bad value) become one
    GalleryError line naming the Milvus, instead of a traceback. For a Milvus Lite file (in this
    process, on this disk) such an error is read as damage and names `graceful check --repair`."""
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
            text = (str(getattr(e, "message", "") or e).splitlines() or [repr(e)])[0]
            if is_local(self.uri):
                raise LiteDamaged(self.uri, text) from None
            raise GalleryError(f"Milvus at {self.uri}: {text}") from None
    return wrapper


def milvus_kind(kind: str, n: int) -> str:
    """The index kind a collection gets: FLAT, or IVF_FLAT for every approximate kind (Milvus
    Lite has no IVF_SQ8 / IVF_PQ; a server's could take over sq8 / pq later)."""
    built = effective_kind(kind, n)
    return "flat" if built == "flat" else "ivf"


def collection_name(gallery_id: str, space: str) -> str:
    """Milvus names allow letters, digits and _; the checksum keeps distinct spaces distinct."""
    safe = re.sub(r"[^A-Za-z0-9_]+", "_", space)[:120]
    return f"graceful_{gallery_id}_{safe}_{zlib.crc32(space.encode()):08x}"


class MilvusSpace:
    """The vectors of one space in one collection; the same surface as search.storage.faiss_index.SpaceIndex."""

    def __init__(self, client, collection: str, space: str, dim: int, version: int, kind: str,
                 uri: str = "", consistency: str = "Session"):
        self.client = client
        self.uri = uri
        self.consistency = consistency  # of searches (Settings.milvus_consistency)
        self.interim: str | None = None  # set when this serves in place of the setting's kind
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
        out: list[int] = []
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
                                        limit=k, search_params=params, output_fields=[],
                                        consistency_level=self.consistency)
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
            version = catalog.vectors.space_version(self.space)
            synced = catalog.state.store_synced(self.space) or {}
            after = max(self.version, synced.get("version", 0) if synced.get("kind") == self.kind else 0)
            n = 0
            for chunk in catalog.vectors.serving_rows(self.space, after_seq=after):
                self.upsert(chunk.ids, chunk.vectors, chunk.models, chunk.seqs)
                n += len(chunk.ids)
        self.version = version
        return n


class MilvusStore:
    """Collections of one gallery in one Milvus (Lite file, server or cluster)."""

    kind = "milvus"
    noun = "Milvus collection"  # what holds one space's vectors, in messages

    def __init__(self, uri: str, gallery_id: str, consistency: str = "Session"):
        self.uri = uri
        self.gallery_id = gallery_id
        self.consistency = consistency
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

    # -- the store interface (as search.storage.faiss_index.FaissStore) ---------------------------------
    @_said
    def open(self, catalog: Catalog, space: str, kind: str, build: bool = True
             ) -> tuple["MilvusSpace | SpaceIndex", str]:
        """The collection of `space`, caught up or rebuilt to agree with the catalog. With
        `build=False` (a read) nothing is rebuilt: a collection of another kind serves as it is,
        and a missing or unusable one is replaced by an exact FAISS index built from the
        catalog in memory (`interim`), as FaissStore.open does."""
        why = self._why_not_current(catalog, space, kind, any_kind=not build)
        if why is not None:
            if not build:
                return interim_flat(catalog, space, why), f"serving ({why})"
            return self.build(catalog, space, kind), f"rebuilt ({why})"
        synced, dim = catalog.state.store_synced(space), catalog.vectors.space_dim(space)
        assert synced is not None and dim is not None  # a current collection: built from vectors
        name = self.collection(space)
        self.client.load_collection(name)
        idx = MilvusSpace(self.client, name, space, dim, synced["version"],
                          synced["kind"], self.uri, self.consistency)
        if kind != "auto" and milvus_kind(kind, catalog.vectors.count_served(space)) != idx.kind:
            idx.interim = f"{idx.kind}, not {kind}"
        if idx.version == catalog.vectors.space_version(space):
            return idx, "loaded"
        n = idx.catch_up(catalog)
        self.save(idx, catalog)
        return idx, f"caught up ({n} vectors)"

    def _why_not_current(self, catalog: Catalog, space: str, kind: str,
                         any_kind: bool = False) -> str | None:
        name = self.collection(space)
        synced = catalog.state.store_synced(space)
        if not self.client.has_collection(name):
            return "missing"
        if synced is None:
            return "not known to match the catalog"
        if (not any_kind and kind != "auto"
                and milvus_kind(kind, catalog.vectors.count_served(space)) != synced.get("kind")):
            return "of another kind"
        if synced["version"] > catalog.vectors.space_version(space):
            return "ahead of the catalog"
        self.client.load_collection(name)
        held = MilvusSpace(self.client, name, space, 0, 0, "", self.uri).ntotal
        expected = catalog.vectors.count_served(space)
        if synced["version"] == catalog.vectors.space_version(space) and held != expected:
            return f"holding {held} vectors, the catalog serves {expected}"
        return None

    @_said
    def build(self, catalog: Catalog, space: str, kind: str) -> MilvusSpace:
        from pymilvus import DataType, MilvusClient

        dim = catalog.vectors.space_dim(space)
        if dim is None:
            raise KeyError(f"no vectors in space {space!r}")
        name = self.collection(space)
        catalog.state.set_store_synced(space, None)  # until the rebuild is complete
        if self.client.has_collection(name):
            self.client.drop_collection(name)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("model", DataType.VARCHAR, max_length=256)
        schema.add_field("seq", DataType.INT64)
        # Strong by default for the reads `check` makes; searches pass the gallery's level.
        self.client.create_collection(name, schema=schema, consistency_level="Strong")
        with catalog.snapshot():
            version = catalog.vectors.space_version(space)
            n = catalog.vectors.count_served(space)
            built = milvus_kind(kind, n)
            idx = MilvusSpace(self.client, name, space, dim, version, built, self.uri,
                              self.consistency)
            for chunk in catalog.vectors.serving_rows(space, batch=WRITE_ROWS):
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
        catalog.state.set_store_synced(index.space, {"version": index.version, "kind": index.kind})

    @_said
    def verify(self, catalog: Catalog, space: str) -> str | None:
        """Why the collection of `space` cannot serve as it is (None: fine or merely behind).
        Beyond the counts `open` compares, every vector it holds is read back and compared with
        the catalog's, and its own vector is searched for (up to SELF_SEARCH_SAMPLE of them):
        damaged data or index files of a Milvus Lite folder are often read without an error.
        For a Milvus Lite file such damage raises LiteDamaged (the folder is moved aside)."""
        kind = (catalog.state.store_synced(space) or {}).get("kind", "auto")
        why = self._why_not_current(catalog, space, kind)
        if why is None:
            why = self._content_problem(catalog, space)
            if why is not None and is_local(self.uri):
                raise LiteDamaged(self.uri, f"the {space} collection is {why}")
        return why

    def _content_problem(self, catalog: Catalog, space: str) -> str | None:
        synced = catalog.state.store_synced(space) or {}
        dim = catalog.vectors.space_dim(space) or 0  # 0: a space without vectors has none to read back
        idx = MilvusSpace(self.client, self.collection(space), space, dim,
                          synced.get("version", 0), synced.get("kind", ""), self.uri, "Strong")
        with catalog.snapshot():
            n = catalog.vectors.count_served(space)
            step = max(1, -(-n // SELF_SEARCH_SAMPLE))
            wrong, missing, probes, seen = [], 0, [], 0
            for chunk in catalog.vectors.serving_rows(space, batch=READ_ROWS):
                keep = chunk.seqs <= idx.version  # newer ones: not yet caught up (fine)
                ids, want = chunk.ids[keep], chunk.vectors[keep]
                if not len(ids):
                    continue
                try:
                    got = idx.vectors(ids)
                except KeyError:
                    missing += 1
                    continue
                off = np.abs(got - want).max(axis=1) > 1e-3
                wrong += [int(i) for i in ids[off]]
                pick = (seen + np.arange(len(ids))) % step == 0
                probes += [(int(i), v) for i, v in zip(ids[pick & ~off], want[pick & ~off])]
                seen += len(ids)
        if missing:
            return "missing photos the catalog serves"
        if wrong:
            return (f"holding wrong vectors for {len(wrong)} photos "
                    f"(#{', #'.join(map(str, wrong[:3]))}{', ...' if len(wrong) > 3 else ''})")
        lost = []
        for start in range(0, len(probes), READ_ROWS):
            part = probes[start:start + READ_ROWS]
            queries = np.stack([v for _, v in part]).astype(np.float32)
            scores, _ = idx.search(queries, 1)
            own = np.einsum("ij,ij->i", queries, queries)
            top = scores[:, 0] if scores.shape[1] else np.full(len(part), -np.inf, np.float32)
            # another photo may tie (a duplicate), never win or fall short of the own score
            lost += [i for (i, _), t, o in zip(part, top, own) if abs(float(t) - float(o)) > 1e-3]
        if lost:
            return (f"not finding {len(lost)} of {len(probes)} photos by their own vector "
                    f"(#{', #'.join(map(str, lost[:3]))}{', ...' if len(lost) > 3 else ''}): "
                    "its index is damaged")
        return None

    def set_aside(self) -> str:
        """Move a damaged Milvus Lite file (folder) aside to `URI.damaged-<time>`, so the next
        connection starts an empty one (filled from the catalog by the caller). Returns the new
        path."""
        import time

        if not is_local(self.uri):
            raise GalleryError(f"{self.uri} is a Milvus server, not a file to move aside")
        self.close()
        key = os.path.abspath(self.uri)
        with milvus_lite._lite_lock:
            if key in milvus_lite._lite_users:
                raise GalleryError(f"the Milvus Lite file {self.uri} is still open in this process "
                                   "(the app or a job): close it, then run graceful check --repair")
            milvus_lite._stop_lite_server(key)
            path = Path(key)
            if not os.path.lexists(path):
                return ""
            if path.is_dir() and (path / "LOCK").exists():
                milvus_lite._wait_for_lite_lock(str(path))  # another process has it open: say so
            stamp = time.strftime("%Y%m%d-%H%M%S")
            dest, n = path.with_name(f"{path.name}.damaged-{stamp}"), 1
            while os.path.lexists(dest):
                n += 1
                dest = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
            os.rename(path, dest)
            return str(dest)
