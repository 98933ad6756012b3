"""`Catalog`: the catalog's connection (db.py's `Db` for SQLite, pg.py's `PgDb` for PostgreSQL)
and one repository per table group over it; `open_catalog` picks the connection by the catalog
setting."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Iterator

from models.settings import Settings

from search.errors import GalleryError

from .db import Connection, Db, _Transaction
from .images import ImagesRepo
from .logs import LogsRepo
from .models import ModelsRepo
from .pg import PgDb, PgTransaction
from .pgconn import is_url
from .state import StateRepo
from .vectors import VectorsRepo


class Catalog:
    """The gallery's catalog: `conn`, its connection (`Db` or `PgDb`), and the repositories
    that hold it, `images`, `vectors`, `models` (built on `state`), `state` and `logs`. What
    belongs to the connection as a whole (transactions, snapshots, closing, integrity, where
    it is) is asked of the catalog itself."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.state = StateRepo(conn)
        self.images = ImagesRepo(conn)
        self.vectors = VectorsRepo(conn)
        self.models = ModelsRepo(conn, self.state)
        self.logs = LogsRepo(conn)
        if isinstance(conn, Db):
            self.state.compact_if_pending()

    @property
    def dialect(self) -> str:
        return self.conn.dialect

    @property
    def path(self) -> Path | str:
        """The SQLite file, or the postgresql:// URL (with its password)."""
        return self.conn.path

    @property
    def location(self) -> str:
        """Where the catalog is, for messages and `info` (a URL without its password)."""
        return self.conn.location

    @property
    def read_only(self) -> str | None:
        """Why the catalog is open for reading only (a full disk), else None."""
        return self.conn.read_only

    @property
    def schema_version(self) -> int:
        return self.conn.schema_version

    def transaction(self) -> _Transaction | PgTransaction:
        """The write transaction (nested use joins the outer one)."""
        return self.conn.transaction()

    def snapshot(self) -> _Transaction | PgTransaction:
        """A read transaction: every read inside sees one consistent state."""
        return self.conn.snapshot()

    def stream(self, sql: str, params: list, batch: int) -> Iterator[list[tuple]]:
        return self.conn.stream(sql, params, batch)

    def integrity_check(self) -> list[str]:
        return self.conn.integrity_check()

    def close(self) -> None:
        self.conn.close()


def catalog_location(home: Path, setting: str | None) -> Path | str:
    """Where a gallery's catalog is: a postgresql:// URL, a SQLite file named by the setting
    (`sqlite:///PATH` or a path), else HOME/catalog.db."""
    if not setting:
        return home / "catalog.db"
    if is_url(setting):
        return setting
    if setting.startswith("sqlite://"):
        return Path(setting[len("sqlite://"):]).expanduser()
    if "://" in setting:
        raise GalleryError(f"unknown catalog {setting!r}: give a postgresql:// URL or the path "
                           "of a SQLite file (GRACEFUL_CATALOG, --catalog)")
    return Path(setting).expanduser()


def catalog_exists(location: Path | str) -> bool:
    """Whether a gallery's catalog is there (a URL is asked when opened)."""
    return is_url(location) or Path(location).exists()


def open_catalog(home: Path, location: Path | str, settings: Settings,
                 create: bool = True) -> Catalog:
    """The catalog at `location` (see catalog_location), created if missing unless `create` is
    off; every expected fault is a GalleryError of one line."""
    from search.errors import friendly

    if is_url(location):
        catalog = Catalog(PgDb(str(location), settings, create=create))
        home.mkdir(parents=True, exist_ok=True)  # this process's own index, cache, reports
        return catalog
    db_path = Path(location)
    if not db_path.exists():
        if not create:
            raise GalleryError(
                f"no gallery at {home}: index some photos first (graceful index PATH) "
                "or point --home / GRACEFUL_HOME at an existing gallery")
        home.mkdir(parents=True, exist_ok=True)
        db_path.parent.mkdir(parents=True, exist_ok=True)
    elif db_path.stat().st_size == 0 and any((home / d).is_dir() and any((home / d).iterdir())
                                             for d in ("images", "index")):
        # A new catalog is empty for a moment; one next to stored photos has lost its data.
        raise GalleryError(
            f"{db_path} is empty (0 bytes) but the gallery holds photos: the catalog was lost. "
            f"Restore catalog.db from a backup, or move it away and re-index the stored photos "
            f"(graceful index {home / 'images'})")
    try:
        return Catalog(Db(db_path, settings))
    except sqlite3.DatabaseError as e:
        raise GalleryError(f"cannot open the gallery at {home}: {friendly(e)}") from None
