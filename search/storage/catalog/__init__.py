"""The catalog (SQLite, or PostgreSQL through pg.py): every SQL statement and state key of
Graceful lives in this package. `Catalog(Db(path))` or `Catalog(PgDb(url))` (`open_catalog`
picks): `catalog.images`, `.vectors`, `.models`, `.state`, `.logs`, one repository per table
group over the one connection `catalog.conn`."""
from .codec import STORED_DTYPE, as_stored, decode_vectors, encode_vectors
from .core import Catalog, catalog_exists, catalog_location, open_catalog
from .db import (
    MIGRATIONS,
    PAGE_SIZE,
    SCHEMA_VERSION,
    Db,
    ReadOnlyCatalog,
    Repo,
    _migrate_to_1,
    _migrate_to_2,
    _migrate_to_3,
    _migrate_to_4,
    _Transaction,
    album_of_source,
    db_timeout,
    id_chunks,
)
from .images import ImageRow, ImagesRepo
from .logs import LogsRepo
from .models import ModelsRepo
from .pg import PgDb
from .state import StateRepo
from .vectors import ServingChunk, SpacePhoto, VectorsRepo

__all__ = [
    "Catalog", "ReadOnlyCatalog", "catalog_exists", "catalog_location",
    "open_catalog", "ImageRow", "SpacePhoto", "ServingChunk",
    "album_of_source", "as_stored", "db_timeout", "decode_vectors", "encode_vectors", "id_chunks",
    "SCHEMA_VERSION", "STORED_DTYPE", "PAGE_SIZE", "MIGRATIONS",
    "Db", "PgDb", "Repo", "ImagesRepo", "VectorsRepo", "ModelsRepo", "StateRepo", "LogsRepo",
]
