"""The catalog: one SQLite file (WAL, through sqlite-utils) that is the source of truth.

Tables
  images    one row per unique image (sha256 of its bytes) and its album (v2)
  vectors   one row per (image, model): the vector, its model and the space it lives in
  spaces    per space: dimension and a version bumped by every vector write (index staleness)
  models    every model the gallery has used, with its space and compatibility
  state     key/value: active model, model history, ...
  events    upgrade / rollback / backfill history
  query_log searches made through the CLI and app (opt-out)
  jobs      progress of long jobs (backfill, re-embed) so they resume after a kill

A vector is either embedded from its photo or transformed from another vector of the same
image (v4: `origin`, `uncertainty`); a model normally serves in the space it declares, unless
a gallery transform gave it a space of its own (state `serving_spaces`).
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import sqlite_utils

SCHEMA_VERSION = 4
# Vectors are stored as float16 (schema v3): half the bytes of float32, and for L2-normalised
# embeddings a cosine error around 1e-7, far below what any retrieval figure can see.
STORED_DTYPE = np.float16


# A float16 1280-d vector row is ~2.6 KB: with SQLite's default 4 KiB pages only one fits per
# page (4.3 KB per vector); 64 KiB pages hold 24.
PAGE_SIZE = int(os.environ.get("GRACEFUL_DB_PAGE_SIZE", "65536"))


def encode_vectors(vectors: np.ndarray) -> list[bytes]:
    return [v.tobytes() for v in np.ascontiguousarray(vectors, dtype=np.float32).astype(STORED_DTYPE)]


def decode_vectors(blobs: list[bytes], dim: int) -> np.ndarray:
    """(n, dim) float32 from stored blobs: float16 (v3), or float32 written before v3."""
    joined = b"".join(blobs)
    if len(joined) == len(blobs) * dim * 2:
        return np.frombuffer(joined, dtype=np.float16).reshape(len(blobs), dim).astype(np.float32)
    if len(joined) == len(blobs) * dim * 4:
        return np.frombuffer(joined, dtype=np.float32).reshape(len(blobs), dim)
    if not blobs:
        return np.zeros((0, dim), np.float32)
    if len(blobs) == 1:
        raise sqlite3.DatabaseError(f"a stored vector is damaged ({len(joined)} bytes for "
                                    f"{dim} dimensions)")
    return np.stack([decode_vectors([b], dim)[0] for b in blobs])  # float16 and float32 mixed


def as_stored(vectors: np.ndarray) -> np.ndarray:
    """What these vectors read back as from the catalog (live indexes hold exactly that)."""
    return np.asarray(vectors, dtype=np.float32).astype(STORED_DTYPE).astype(np.float32)


def _migrate_to_1(db: sqlite_utils.Database) -> None:
    db["images"].create(
        {"id": int, "sha256": str, "name": str, "ext": str, "bytes": int, "width": int,
         "height": int, "format": str, "source": str, "added_at": float},
        pk="id", not_null={"sha256"},
    )
    db["images"].create_index(["sha256"], unique=True)
    db["vectors"].create(
        {"image_id": int, "model": str, "space": str, "dim": int, "vector": bytes,
         "created_at": float, "seq": int},
        pk=("image_id", "model"), foreign_keys=[("image_id", "images", "id")],
    )
    db["vectors"].create_index(["space", "image_id", "seq"])
    db["vectors"].create_index(["space", "seq"])
    db["vectors"].create_index(["model"])
    db["spaces"].create({"space": str, "dim": int, "version": int}, pk="space")
    db["models"].create(
        {"name": str, "space": str, "dim": int, "kind": str, "compatible_with": str,
         "source": str, "added_at": float, "activated_at": float, "info": str},
        pk="name",
    )
    db["state"].create({"key": str, "value": str}, pk="key")
    db["events"].create({"id": int, "at": float, "kind": str, "detail": str}, pk="id")
    db["query_log"].create(
        {"id": int, "at": float, "model": str, "kind": str, "query_sha": str, "query": str,
         "k": int, "results": str},
        pk="id",
    )
    db["jobs"].create({"name": str, "state": str, "updated_at": float}, pk="name")


def album_of_source(source: str | None) -> str | None:
    """The default album of a photo: the name of the folder it was indexed from."""
    if not source:
        return None
    return Path(source).parent.name or None


def _migrate_to_2(db: sqlite_utils.Database) -> None:
    """Albums: a photo's album is the folder it was indexed from unless the user sets one."""
    db.execute("ALTER TABLE images ADD COLUMN album TEXT")
    rows = db.execute("SELECT id, source FROM images").fetchall()
    db.conn.executemany("UPDATE images SET album = ? WHERE id = ?",
                        [(album_of_source(src), i) for i, src in rows])
    db.execute("CREATE INDEX IF NOT EXISTS idx_images_album ON images (album)")


def _migrate_to_3(db: sqlite_utils.Database) -> None:
    """float32 vector blobs -> float16 (see STORED_DTYPE), in chunks to bound memory."""
    last = 0
    while rows := db.execute(
            "SELECT rowid, vector, dim FROM vectors WHERE rowid > ? AND length(vector) = dim * 4 "
            "ORDER BY rowid LIMIT 5000", [last]).fetchall():
        db.conn.executemany("UPDATE vectors SET vector = ? WHERE rowid = ?", [
            (np.frombuffer(blob, np.float32).astype(STORED_DTYPE).tobytes(), rowid)
            for rowid, blob, _ in rows])
        last = rows[-1][0]


def _migrate_to_4(db: sqlite_utils.Database) -> None:
    """How each vector was made: NULL = embedded from the photo by its model; 'head' = the
    model's head applied to its backbone's stored vector (exact); 'map' = a learned map of
    another space's vector (approximate, `uncertainty` = its expected residual)."""
    have = set(db["vectors"].columns_dict)
    for column, kind in (("origin", "TEXT"), ("uncertainty", "REAL")):
        if column not in have:
            db.execute(f"ALTER TABLE vectors ADD COLUMN {column} {kind}")


MIGRATIONS = {1: _migrate_to_1, 2: _migrate_to_2, 3: _migrate_to_3, 4: _migrate_to_4}


def db_timeout() -> float:
    """How long a writer waits for another process's write lock before giving up with "the
    gallery is busy" (GRACEFUL_DB_TIMEOUT seconds, default 30)."""
    return float(os.environ.get("GRACEFUL_DB_TIMEOUT", "30"))


def id_chunks(ids: Iterable[int], size: int = 900) -> Iterator[tuple[list[int], str]]:
    """(ids, "?,?,…") pieces of an id list: SQLite caps the parameters of one statement."""
    ids = [int(i) for i in ids]
    for s in range(0, len(ids), size):
        chunk = ids[s:s + size]
        yield chunk, ",".join("?" * len(chunk))


@dataclass
class ImageRow:
    id: int
    sha256: str
    name: str
    ext: str
    bytes: int
    width: int
    height: int
    format: str
    source: str
    added_at: float
    album: str | None = None


@dataclass
class SpacePhoto:
    id: int
    sha256: str
    ext: str
    album: str | None


@dataclass
class ServingChunk:
    ids: np.ndarray
    vectors: np.ndarray
    models: list[str]
    seqs: np.ndarray


class ReadOnlyCatalog:
    """A read-only connection for a worker thread (the ingest loader): its own connection, so
    it never shares a transaction with the writer."""

    def __init__(self, path: Path):
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                                    timeout=db_timeout())

    def stored_ext(self, sha256: str, space: str) -> str | None:
        """The stored file extension of an image already embedded in `space`, else None."""
        row = self.conn.execute(
            "SELECT i.ext FROM images i JOIN vectors v ON v.image_id = i.id "
            "WHERE i.sha256 = ? AND v.space = ? LIMIT 1", [sha256, space]).fetchone()
        return row[0] if row else None


class Catalog:
    def __init__(self, path: Path):
        self.path = Path(path)
        conn = sqlite3.connect(str(self.path), timeout=db_timeout(), check_same_thread=False,
                               isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        self.db.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # takes effect in a new file only
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.migrate()
        if self.get_state(self.COMPACT_PENDING) and self.compact():
            self.set_state(self.COMPACT_PENDING, False)

    # -- schema ---------------------------------------------------------------------------
    @property
    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        current = self.schema_version
        if current > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} has schema v{current}, newer than this Graceful (v{SCHEMA_VERSION}); upgrade Graceful"
            )
        if current == SCHEMA_VERSION:
            return
        # The version is read again inside the write lock: two processes opening a new (or old)
        # gallery at the same moment must not both run a migration.
        with self.transaction():
            start = self.schema_version
            for version in range(start + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[version](self.db)
                self.db.execute(f"PRAGMA user_version = {version}")
        if 0 < start < 3:  # float16 vectors: give the freed half back, in larger pages
            self.set_state(self.COMPACT_PENDING, True)

    def compact(self) -> bool:
        """Rewrite the file with PAGE_SIZE pages and no free space. It needs the gallery to
        itself: when another connection is using it, nothing changes, False at once (no wait),
        and the next open tries again."""
        timeout = self.db.execute("PRAGMA busy_timeout").fetchone()[0]
        self.db.execute("PRAGMA busy_timeout = 0")
        try:
            self.db.execute("PRAGMA journal_mode=DELETE")  # page size changes only outside WAL
            if self.db.execute("PRAGMA journal_mode").fetchone()[0] != "delete":
                return False
            self.db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            self.db.execute("VACUUM")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA busy_timeout = {timeout}")

    def transaction(self):
        return _Transaction(self.db.conn)

    def snapshot(self):
        """A read transaction: every read inside sees one consistent state of the file."""
        return _Transaction(self.db.conn, "BEGIN DEFERRED")

    def close(self) -> None:
        self.db.conn.close()

    # -- state ----------------------------------------------------------------------------
    # The keys of the state table; nothing outside this class names them.
    ACTIVE_MODEL, MODEL_HISTORY, INDEX_KIND, LOG_QUERIES = (
        "active_model", "model_history", "index_kind", "log_queries")
    VECTOR_STORE, STORE_SYNCED, GALLERY_ID = "vector_store", "store_synced", "gallery_id"
    RUNTIMES, COMPACT_PENDING = "runtimes", "compact_pending"
    SERVING_SPACES = "serving_spaces"

    @property
    def active_model(self) -> str | None:
        return self.get_state(self.ACTIVE_MODEL)

    def set_active_model(self, name: str) -> None:
        self.set_state(self.ACTIVE_MODEL, name)
        self.db.conn.execute("UPDATE models SET activated_at = ? WHERE name = ?", [time.time(), name])

    def model_history(self) -> list[str]:
        return self.get_state(self.MODEL_HISTORY, [])

    def set_model_history(self, history: list[str]) -> None:
        self.set_state(self.MODEL_HISTORY, list(history))

    def serving_space(self, model: str) -> str | None:
        """The space `model` searches and writes when active, if a transform gave it its own."""
        return self.get_state(self.SERVING_SPACES, {}).get(model)

    def set_serving_space(self, model: str, space: str | None) -> None:
        with self.transaction():
            spaces = self.get_state(self.SERVING_SPACES, {})
            if space is None:
                spaces.pop(model, None)
            else:
                spaces[model] = space
            self.set_state(self.SERVING_SPACES, spaces)

    def index_kind(self) -> str:
        return self.get_state(self.INDEX_KIND, "flat")

    def set_index_kind(self, kind: str) -> None:
        self.set_state(self.INDEX_KIND, kind)

    def vector_store(self) -> dict | None:
        """Where the search vectors are served from: {"kind": "faiss"} or {"kind": "milvus",
        "uri": ...}; None for a gallery that never chose (it uses FAISS index files)."""
        return self.get_state(self.VECTOR_STORE)

    def set_vector_store(self, config: dict | None) -> None:
        if config is None:
            self.db.execute("DELETE FROM state WHERE key = ?", [self.VECTOR_STORE])
        else:
            self.set_state(self.VECTOR_STORE, config)
        self.set_state(self.STORE_SYNCED, {})  # nothing is known to be in the new store yet

    def gallery_id(self) -> str:
        """A random id naming this gallery's collections in a shared vector database."""
        gid = self.get_state(self.GALLERY_ID)
        if gid is None:
            import uuid

            with self.transaction():
                gid = self.get_state(self.GALLERY_ID)
                if gid is None:
                    gid = uuid.uuid4().hex[:12]
                    self.set_state(self.GALLERY_ID, gid)
        return gid

    def store_synced(self, space: str) -> dict | None:
        """What an external vector store was last known to hold for `space`: {"version",
        "kind"} recorded after a write to it was flushed; None when unknown."""
        return self.get_state(self.STORE_SYNCED, {}).get(space)

    def set_store_synced(self, space: str, record: dict | None) -> None:
        with self.transaction():
            synced = self.get_state(self.STORE_SYNCED, {})
            if record is None:
                synced.pop(space, None)
            else:
                synced[space] = record
            self.set_state(self.STORE_SYNCED, synced)

    def runtimes(self) -> dict[str, list[str]]:
        """Per model, the inference paths (torch, onnxruntime) that computed its stored vectors."""
        return self.get_state(self.RUNTIMES, {})

    def note_runtime(self, model: str, runtimes: Iterable[str]) -> None:
        known = self.runtimes().get(model, [])
        if set(runtimes) <= set(known):
            return
        with self.transaction():
            record = self.runtimes()
            record[model] = sorted(set(record.get(model, [])) | set(runtimes))
            self.set_state(self.RUNTIMES, record)

    def log_queries(self) -> bool:
        return self.get_state(self.LOG_QUERIES, True)

    def set_log_queries(self, on: bool) -> None:
        self.set_state(self.LOG_QUERIES, bool(on))

    def integrity_check(self) -> list[str]:
        return [r[0] for r in self.db.execute("PRAGMA integrity_check").fetchall()]

    def get_state(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM state WHERE key = ?", [key]).fetchone()
        return json.loads(row[0]) if row else default

    def set_state(self, key: str, value) -> None:
        self.db["state"].upsert({"key": key, "value": json.dumps(value)}, pk="key")

    def log_event(self, kind: str, **detail) -> None:
        self.db["events"].insert({"at": time.time(), "kind": kind, "detail": json.dumps(detail)})

    # -- query log and jobs ---------------------------------------------------------------
    def log_query(self, model: str, kind: str, query_sha: str, query: str, k: int,
                  results: list[int]) -> None:
        self.db.conn.execute(
            "INSERT INTO query_log (at, model, kind, query_sha, query, k, results) "
            "VALUES (?,?,?,?,?,?,?)", [time.time(), model, kind, query_sha, query, k, json.dumps(results)])

    def logged_image_queries(self) -> Iterator[tuple[str, str]]:
        """(query label, query sha256) of logged image searches, newest first."""
        yield from self.db.execute(
            "SELECT query, query_sha FROM query_log WHERE kind = 'image' ORDER BY id DESC")

    def logged_results(self) -> Iterator[list[int]]:
        for (results,) in self.db.execute("SELECT results FROM query_log"):
            yield json.loads(results)

    def count_logged_queries(self) -> int:
        return self.db.execute("SELECT count(*) FROM query_log").fetchone()[0]

    def save_job(self, name: str, state: dict) -> None:
        self.db.conn.execute("INSERT OR REPLACE INTO jobs (name, state, updated_at) VALUES (?, ?, ?)",
                             [name, json.dumps(state), time.time()])

    # -- images ---------------------------------------------------------------------------
    def image_ids_by_sha_prefix(self, prefix: str, limit: int = 2) -> list[int]:
        return [r[0] for r in self.db.execute(
            "SELECT id FROM images WHERE sha256 LIKE ? LIMIT ?", [prefix.lower() + "%", limit])]

    def images_missing_in_space(self, space: str) -> list[int]:
        """Ids of images with no vector in `space`, in id order."""
        return [r[0] for r in self.db.execute(
            "SELECT id FROM images WHERE id NOT IN (SELECT image_id FROM vectors WHERE space = ?) "
            "ORDER BY id", [space])]

    def images_without_model(self, space: str, model: str) -> list[tuple[int, float]]:
        """(id, added_at) of images served in `space` that have no vector by `model`."""
        return self.db.execute(
            "SELECT id, added_at FROM images WHERE id IN (SELECT image_id FROM vectors WHERE space = ?)"
            " AND id NOT IN (SELECT image_id FROM vectors WHERE model = ?) ORDER BY id",
            [space, model]).fetchall()

    def image_id(self, sha256: str) -> int | None:
        row = self.db.execute("SELECT id FROM images WHERE sha256 = ?", [sha256]).fetchone()
        return row[0] if row else None

    def add_image(self, row: dict) -> int:
        existing = self.image_id(row["sha256"])
        if existing is not None:
            return existing
        return self.db["images"].insert(row).last_pk

    def images(self, ids: Iterable[int]) -> dict[int, ImageRow]:
        out: dict[int, ImageRow] = {}
        for chunk, marks in id_chunks(ids):
            cursor = self.db.execute(f"SELECT * FROM images WHERE id IN ({marks})", chunk)
            out.update((r[0], ImageRow(*r)) for r in cursor.fetchall())
        return out

    def hit_rows(self, ids: Iterable[int], space: str) -> tuple[dict[int, ImageRow], dict[int, str]]:
        """Image rows of search hits and the model whose vector served each, in one query."""
        ids = [int(i) for i in ids]
        if not ids:
            return {}, {}
        marks = ",".join("?" * len(ids))
        cursor = self.db.execute(
            f"SELECT i.*, (SELECT v.model FROM vectors v WHERE v.image_id = i.id AND v.space = ? "
            f"ORDER BY v.seq DESC LIMIT 1) FROM images i WHERE i.id IN ({marks})", [space, *ids])
        rows, models = {}, {}
        for r in cursor.fetchall():
            rows[r[0]] = ImageRow(*r[:-1])
            models[r[0]] = r[-1] or "?"
        return rows, models

    def list_images(self, offset: int = 0, limit: int = 50, album: str | None = None) -> list[ImageRow]:
        where, params = ("WHERE album = ? ", [album]) if album is not None else ("", [])
        cursor = self.db.execute(f"SELECT * FROM images {where}ORDER BY id LIMIT ? OFFSET ?",
                                 [*params, limit, offset])
        return [ImageRow(*r) for r in cursor.fetchall()]

    def count_images(self, album: str | None = None) -> int:
        if album is not None:
            return self.db.execute("SELECT count(*) FROM images WHERE album = ?", [album]).fetchone()[0]
        return self.db.execute("SELECT count(*) FROM images").fetchone()[0]

    # -- albums ---------------------------------------------------------------------------
    def albums(self) -> list[dict]:
        rows = self.db.execute(
            "SELECT album, count(*) FROM images GROUP BY album ORDER BY album IS NULL, album").fetchall()
        return [{"album": a, "images": n} for a, n in rows]

    def album_labels(self, ids: Iterable[int] | None = None) -> dict[int, str | None]:
        if ids is None:
            return dict(self.db.execute("SELECT id, album FROM images").fetchall())
        out: dict[int, str | None] = {}
        for chunk, marks in id_chunks(ids):
            out.update(self.db.execute(f"SELECT id, album FROM images WHERE id IN ({marks})", chunk))
        return out

    def set_album(self, ids: Iterable[int], album: str | None) -> int:
        """Put images into `album` (None: no album). Returns how many rows changed."""
        changed = 0
        with self.transaction():
            for chunk, marks in id_chunks(ids):
                changed += self.db.conn.execute(
                    f"UPDATE images SET album = ? WHERE id IN ({marks})", [album, *chunk]).rowcount
        return changed

    def set_album_by_sha(self, shas: Iterable[str], album: str | None) -> int:
        shas = list(shas)
        with self.transaction():
            return sum(self.db.conn.execute("UPDATE images SET album = ? WHERE sha256 = ?",
                                            [album, s]).rowcount for s in shas)

    def rename_album(self, old: str, new: str | None) -> int:
        with self.transaction():
            return self.db.conn.execute("UPDATE images SET album = ? WHERE album = ?",
                                        [new, old]).rowcount

    # -- vectors --------------------------------------------------------------------------
    def space_members(self, space: str, exclude_model: str | None = None) -> np.ndarray:
        """Ids of the images served in `space`, optionally leaving out those whose serving vector
        was computed by `exclude_model` (a candidate model must not be checked against itself)."""
        rows = self.db.execute(
            "SELECT v.image_id, v.model FROM vectors v JOIN ("
            " SELECT image_id, max(seq) AS newest FROM vectors WHERE space = ? GROUP BY image_id"
            ") m ON v.image_id = m.image_id AND v.seq = m.newest WHERE v.space = ? "
            "ORDER BY v.image_id", [space, space]).fetchall()
        return np.array([i for i, m in rows if m != exclude_model], dtype=np.int64)

    def space_photos(self, space: str) -> list["SpacePhoto"]:
        """Every image with a vector in `space`: id, sha256, file extension, album."""
        rows = self.db.execute(
            "SELECT id, sha256, ext, album FROM images WHERE id IN "
            "(SELECT image_id FROM vectors WHERE space = ?) ORDER BY id", [space]).fetchall()
        return [SpacePhoto(*r) for r in rows]

    def serving_vectors_of(self, image_ids: Iterable[int], space: str) -> dict[int, np.ndarray]:
        """The serving (newest) vector in `space` of each of these images that has one."""
        newest: dict[int, tuple[int, bytes]] = {}
        for chunk, marks in id_chunks(image_ids):
            # no ORDER BY: it would make SQLite walk the (space, seq) index over the whole space
            for i, seq, blob in self.db.execute(
                    f"SELECT image_id, seq, vector FROM vectors WHERE space = ? AND image_id IN "
                    f"({marks})", [space, *chunk]):
                if i not in newest or seq > newest[i][0]:
                    newest[i] = (seq, blob)
        if not newest:
            return {}
        ids = list(newest)
        vectors = decode_vectors([newest[i][1] for i in ids], self.space_dim(space))
        return dict(zip(ids, vectors))

    def put_vectors(self, image_ids: list[int], vectors: np.ndarray, model: str, space: str,
                    origin: str | None = None, uncertainty: np.ndarray | None = None) -> None:
        """Store vectors (call inside a transaction); bumps the space's version. `origin`: None
        when embedded from the photo, 'head' / 'map' when transformed from a stored vector."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        dim = self.space_dim(space)
        if dim is not None and dim != vectors.shape[1]:
            raise ValueError(f"space {space!r} holds {dim}-d vectors, not {vectors.shape[1]}-d")
        self.db.conn.execute(
            "INSERT INTO spaces (space, dim, version) VALUES (?, ?, 1) "
            "ON CONFLICT(space) DO UPDATE SET version = version + 1",
            [space, vectors.shape[1]],
        )
        seq = self.space_version(space)  # every write of a space gets the next sequence number
        now = time.time()
        unc = [None] * len(image_ids) if uncertainty is None else [float(u) for u in uncertainty]
        self.db.conn.executemany(
            "INSERT OR REPLACE INTO vectors (image_id, model, space, dim, vector, created_at, seq, "
            "origin, uncertainty) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(int(i), model, space, vectors.shape[1], blob, now, seq, origin, u)
             for i, blob, u in zip(image_ids, encode_vectors(vectors), unc)],
        )

    def space_version(self, space: str) -> int:
        row = self.db.execute("SELECT version FROM spaces WHERE space = ?", [space]).fetchone()
        return row[0] if row else 0

    def space_dim(self, space: str) -> int | None:
        row = self.db.execute("SELECT dim FROM spaces WHERE space = ?", [space]).fetchone()
        return row[0] if row else None

    def serving_vectors(self, space: str, after_seq: int = 0, batch: int = 20000
                        ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) of the vector that serves each image in `space`: its newest one.

        With `after_seq`, only images whose serving vector was written after that version."""
        for chunk in self.serving_rows(space, after_seq, batch):
            yield chunk.ids, chunk.vectors

    def serving_rows(self, space: str, after_seq: int = 0, batch: int = 20000
                     ) -> Iterator["ServingChunk"]:
        """Like serving_vectors, with the model and seq of each vector (for external stores)."""
        dim = self.space_dim(space)
        if dim is None:
            return
        # Each write of a space has its own seq and names an image at most once, so
        # (image_id, max seq) identifies one row.
        cursor = self.db.execute(
            "SELECT v.image_id, v.vector, v.model, v.seq FROM vectors v JOIN ("
            " SELECT image_id, max(seq) AS newest FROM vectors WHERE space = ? GROUP BY image_id"
            ") m ON v.image_id = m.image_id AND v.seq = m.newest "
            "WHERE v.space = ? AND m.newest > ? ORDER BY v.image_id",
            [space, space, after_seq],
        )
        while rows := cursor.fetchmany(batch):
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vecs = decode_vectors([r[1] for r in rows], dim)
            yield ServingChunk(ids, vecs, [r[2] for r in rows],
                               np.fromiter((r[3] for r in rows), dtype=np.int64, count=len(rows)))

    def has_vectors(self) -> bool:
        return self.db.execute("SELECT EXISTS (SELECT 1 FROM vectors)").fetchone()[0] == 1

    def count_served(self, space: str) -> int:
        """How many images have a vector in `space` (each is served exactly once)."""
        return self.db.execute("SELECT count(DISTINCT image_id) FROM vectors WHERE space = ?",
                               [space]).fetchone()[0]

    def vectors_by_model(self, model: str, image_ids: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        sql = "SELECT image_id, vector, dim FROM vectors WHERE model = ?"
        params: list = [model]
        if image_ids is not None:
            sql += f" AND image_id IN ({','.join('?' * len(image_ids))})"
            params += [int(i) for i in image_ids]
        rows = self.db.execute(sql + " ORDER BY image_id", params).fetchall()
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        return ids, decode_vectors([r[1] for r in rows], rows[0][2])

    def count_vectors(self, model: str, space: str) -> int:
        return self.db.execute("SELECT count(*) FROM vectors WHERE model = ? AND space = ?",
                               [model, space]).fetchone()[0]

    def vector_counts(self) -> list[dict]:
        """Per (space, model): vectors, and how many of them were transformed from stored
        vectors rather than embedded from the photos."""
        rows = self.db.execute(
            "SELECT space, model, count(*), count(origin) FROM vectors GROUP BY space, model "
            "ORDER BY space, model").fetchall()
        return [{"space": s, "model": m, "vectors": n, "transformed": t, "embedded": n - t}
                for s, m, n, t in rows]

    def images_to_transform(self, source: str, target: str) -> list[int]:
        """Images served in `source` with no vector in `target` yet, in id order."""
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT image_id FROM vectors WHERE space = ? AND image_id NOT IN "
            "(SELECT image_id FROM vectors WHERE space = ?) ORDER BY image_id", [source, target])]

    def serving_origins(self, space: str, image_ids: Iterable[int]) -> dict[int, tuple]:
        """(model, origin) of the serving vector in `space` of each of these images."""
        newest: dict[int, tuple] = {}
        for chunk, marks in id_chunks(image_ids):
            # newest per image in Python: ORDER BY seq would scan the whole space
            for i, seq, model, origin in self.db.execute(
                    f"SELECT image_id, seq, model, origin FROM vectors WHERE space = ? AND "
                    f"image_id IN ({marks})", [space, *chunk]):
                if i not in newest or seq > newest[i][0]:
                    newest[i] = (seq, model, origin)
        return {i: v[1:] for i, v in newest.items()}

    def transformed_vectors(self, space: str, model: str) -> list[tuple[int, float]]:
        """(image id, when the image was added) of `model`'s vectors in `space` that a learned
        map made, most uncertain (largest expected residual) first."""
        return self.db.execute(
            "SELECT v.image_id, i.added_at FROM vectors v JOIN images i ON i.id = v.image_id "
            "WHERE v.space = ? AND v.model = ? AND v.origin = 'map' "
            "ORDER BY v.uncertainty DESC, v.image_id", [space, model]).fetchall()

    def serving_model_of(self, image_ids: list[int], space: str) -> dict[int, str]:
        """The model whose vector serves each of these images in `space`."""
        return {i: model for i, (model, _) in self.serving_origins(space, image_ids).items()}

    # -- models ---------------------------------------------------------------------------
    def register_model(self, info: dict, source: str) -> None:
        if self.db["models"].count_where("name = ?", [info["name"]]):
            return
        self.db["models"].insert({
            "name": info["name"], "space": info["space"], "dim": info["dim"], "kind": info["kind"],
            "compatible_with": json.dumps(list(info.get("compatible_with", []))),
            "source": source, "added_at": time.time(), "activated_at": None,
            "info": json.dumps({k: v for k, v in info.items() if k != "extra"}),
        })

    def models(self) -> list[dict]:
        rows = list(self.db["models"].rows_where(order_by="added_at"))
        for r in rows:
            r["compatible_with"] = json.loads(r["compatible_with"])
            r.pop("info", None)
        return rows

    def model(self, name: str) -> dict | None:
        row = self.db.execute("SELECT * FROM models WHERE name = ?", [name]).fetchone()
        if row is None:
            return None
        m = dict(zip([d[0] for d in self.db.execute("SELECT * FROM models LIMIT 0").description], row))
        m["compatible_with"] = json.loads(m["compatible_with"])
        m.pop("info", None)
        return m


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT/ROLLBACK, so a crash leaves the old or the new state.

    IMMEDIATE takes the write lock up front, so two processes never deadlock upgrading a read
    lock. sqlite-utils' own writes inside it become savepoints (`Database.atomic`). Nested use
    joins the outer transaction.
    """

    def __init__(self, conn: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE"):
        self.conn = conn
        self.begin = begin
        self.outer = False

    def __enter__(self):
        if not self.conn.in_transaction:
            self.conn.execute(self.begin)
            self.outer = True
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.outer:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
