"""The catalog's connection: one SQLite file (WAL, through sqlite-utils) that is the source of truth.

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

This module holds the schema, its versioned migrations, the transactions, `Db` (the connection
every repository holds: images.py, vectors.py, models.py, state.py, logs.py) and `Repo`, their
base. The same repositories run over a PostgreSQL connection (pg.py's `PgDb`): their SQL is the
dialect both accept (`?` placeholders, `ON CONFLICT`, `RETURNING`); only this module's and
pg.py's differ.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Union

import numpy as np

from models.settings import Settings

from search.errors import GalleryError

from .codec import STORED_DTYPE
from .lean_import import sqlite_utils
from .readonly import disk_full, open_for_reading
from .version import SCHEMA_VERSION

if TYPE_CHECKING:
    from .pg import PgDb

# A float16 1280-d vector row is ~2.6 KB: with SQLite's default 4 KiB pages only one fits per
# page (4.3 KB per vector); 64 KiB pages hold 24.
PAGE_SIZE = Settings.db_page_size  # a new catalog's page size unless GRACEFUL_DB_PAGE_SIZE says


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


MIGRATIONS: dict[int, Callable[[sqlite_utils.Database], None]] = {
    1: _migrate_to_1, 2: _migrate_to_2, 3: _migrate_to_3, 4: _migrate_to_4}


def db_timeout() -> float:
    """How long a writer waits for another process's write lock before giving up with "the
    gallery is busy" (GRACEFUL_DB_TIMEOUT seconds, default 30)."""
    return Settings.from_env().db_timeout


def id_chunks(ids: Iterable[int], size: int = 900) -> Iterator[tuple[list[int], str]]:
    """(ids, "?,?,…") pieces of an id list: SQLite caps the parameters of one statement."""
    ids = [int(i) for i in ids]
    for s in range(0, len(ids), size):
        chunk = ids[s:s + size]
        yield chunk, ",".join("?" * len(chunk))


class ReadOnlyCatalog:
    """A read-only connection for a worker thread (the ingest loader): its own connection, so
    it never shares a transaction with the writer. `path`: the catalog's location (a SQLite
    file, or a postgresql:// URL: then a `pg.PgReader`)."""

    def __new__(cls, path: Path | str):
        from .pgconn import PgReader, is_url

        if is_url(path):
            return PgReader(str(path))
        return super().__new__(cls)

    def __init__(self, path: Path | str):
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                                    timeout=db_timeout())

    def stored_ext(self, sha256: str, space: str) -> str | None:
        """The stored file extension of an image already embedded in `space`, else None."""
        row = self.conn.execute(
            "SELECT i.ext FROM images i JOIN vectors v ON v.image_id = i.id "
            "WHERE i.sha256 = ? AND v.space = ? LIMIT 1", [sha256, space]).fetchone()
        return row[0] if row else None


class Db:
    """The writer's connection to a SQLite catalog: its schema, migrations and transactions.
    The repositories (ImagesRepo, VectorsRepo, ModelsRepo, StateRepo, LogsRepo) each hold it
    and work on its `db`; `Catalog` puts them together."""

    path: Path
    db: sqlite_utils.Database
    dialect = "sqlite"

    def __init__(self, path: Path, settings: Settings | None = None):
        """`settings`: the lock timeout and page size (default: read from the environment)."""
        self.path = Path(path)
        settings = settings or Settings.from_env()
        self.page_size = settings.db_page_size
        # why the catalog is open for reading only (a full disk), else None
        self.read_only: str | None = None
        # a migration freed space: `Catalog` records a compaction as pending (StateRepo)
        self.compact_due = False
        conn = sqlite3.connect(str(self.path), timeout=settings.db_timeout,
                               check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA user_version").fetchone()  # the first read sizes the WAL's -shm
        except sqlite3.OperationalError as e:
            conn.close()
            reader = open_for_reading(self.path, settings.db_timeout) if disk_full(e) else None
            if reader is None:
                raise
            conn, self.read_only = reader, str(e)
        self.db = sqlite_utils.Database(conn)
        self.refuse_newer_schema()  # before any PRAGMA that could change the file
        if self.read_only is None:
            self.db.execute(f"PRAGMA page_size = {self.page_size}")  # a new file only
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.migrate()

    @property
    def location(self) -> str:
        """Where the catalog is, for messages and `info` (a URL without its password)."""
        return str(self.path)

    def stream(self, sql: str, params: list, batch: int) -> Iterator[list[tuple]]:
        """The rows of a long read in lists of `batch` (never all of them in memory)."""
        cursor = self.db.execute(sql, params)
        while rows := cursor.fetchmany(batch):
            yield rows

    def reset_ids(self) -> None:
        """After rows were copied in with their ids: new rows continue after them (SQLite's
        integer keys always do)."""

    # -- schema ---------------------------------------------------------------------------
    @property
    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def refuse_newer_schema(self) -> None:
        """A catalog written by a newer Graceful is left untouched: GalleryError, one line."""
        current = self.schema_version
        if current > SCHEMA_VERSION:
            self.close()
            raise GalleryError(
                f"{self.path} was written by a newer Graceful (catalog schema v{current}; this "
                f"one reads up to v{SCHEMA_VERSION}): upgrade Graceful to open it (nothing was "
                "changed)")

    def migrate(self) -> None:
        self.refuse_newer_schema()
        current = self.schema_version
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
            self.compact_due = True

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
            self.db.execute(f"PRAGMA page_size = {self.page_size}")
            self.db.execute("VACUUM")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA busy_timeout = {timeout}")

    def transaction(self) -> _Transaction:
        return _Transaction(self.db.conn)

    def snapshot(self) -> _Transaction:
        """A read transaction: every read inside sees one consistent state of the file."""
        return _Transaction(self.db.conn, "BEGIN DEFERRED")

    def close(self) -> None:
        self.db.conn.close()

    def integrity_check(self) -> list[str]:
        return [r[0] for r in self.db.execute("PRAGMA integrity_check").fetchall()]


Connection = Union[Db, "PgDb"]  # a catalog's connection: SQLite (Db) or PostgreSQL (pg.PgDb)


class Repo:
    """A repository: one table group's SQL, run on the catalog's connection (`conn`; `db` is its
    database, sqlite-utils' or pgconn's `PgDatabase`)."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.db: Any = conn.db


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

    def __enter__(self) -> _Transaction:
        if not self.conn.in_transaction:
            self.conn.execute(self.begin)
            self.outer = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # an exception propagates
        if self.outer:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
