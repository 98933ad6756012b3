"""`Catalog`: the writer's connection (db.py) with every table group's repository mixed in;
`PgCatalog` the same on PostgreSQL (pg.py); `open_catalog` picks one by the catalog setting."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from models.settings import Settings

from search.errors import GalleryError

from .images import ImagesRepo
from .logs import LogsRepo
from .models import ModelsRepo
from .pg import PgDb
from .pgconn import is_url
from .state import StateRepo
from .vectors import VectorsRepo


class Catalog(ImagesRepo, VectorsRepo, ModelsRepo, StateRepo, LogsRepo):
    """The gallery's catalog. Every repository derives from `Db` (connection, schema,
    transactions), so `Db` comes last in the method resolution order; `StateRepo` after
    `ModelsRepo`, which builds on it."""


class PgCatalog(PgDb, Catalog):  # type: ignore[misc]
    """The same catalog in PostgreSQL: `PgDb` replaces `Db`'s connection, schema and
    transactions; every repository's SQL is shared."""


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
        catalog = PgCatalog(str(location), settings, create=create)
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
        return Catalog(db_path, settings)
    except sqlite3.DatabaseError as e:
        raise GalleryError(f"cannot open the gallery at {home}: {friendly(e)}") from None
