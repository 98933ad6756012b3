"""Moving a catalog between SQLite and PostgreSQL (`graceful migrate-catalog`), either way.

Images and vectors are copied in key order, one destination transaction per batch, so a kill
loses at most the batch in flight and the same command resumes after the last committed key.
The last step runs under the source's write lock (writers wait): images and vectors written
since are caught up (vectors by their per-space `seq`), the small tables (spaces, models,
state, events, query log, jobs) are copied whole, and both catalogs are compared table by
table: row counts and a SHA-256 of every row (a vector by its bytes). Ids are kept, so vector
stores (FAISS files, Milvus collections keyed by image id) stay valid.
"""
from __future__ import annotations

import hashlib
from typing import Callable

from search.errors import GalleryError

from .core import Catalog

IMAGE_COLS = ("id", "sha256", "name", "ext", "bytes", "width", "height", "format", "source",
              "added_at", "album")
VECTOR_COLS = ("image_id", "model", "space", "dim", "vector", "created_at", "seq", "origin",
               "uncertainty")
SMALL = {  # table: (columns, order)
    "spaces": (("space", "dim", "version"), "space"),
    "models": (("name", "space", "dim", "kind", "compatible_with", "source", "added_at",
                "activated_at", "info"), "name"),
    "state": (("key", "value"), "key"),
    "events": (("id", "at", "kind", "detail"), "id"),
    "query_log": (("id", "at", "model", "kind", "query_sha", "query", "k", "results"), "id"),
    "jobs": (("name", "state", "updated_at"), "name"),
}
MARK = "migrating_from"  # state key in the destination while a copy is under way


def _insert(dst: Catalog, table: str, cols: tuple, rows: list, conflict: str) -> None:
    if rows:
        dst.conn.db.conn.executemany(
            f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
            f"ON CONFLICT({conflict}) DO NOTHING", [tuple(r) for r in rows])


def _copy_images(src: Catalog, dst: Catalog, batch: int, tick) -> int:
    copied = 0
    while True:
        last = dst.conn.db.execute("SELECT coalesce(max(id), 0) FROM images").fetchone()[0]
        rows = src.conn.db.execute(f"SELECT {', '.join(IMAGE_COLS)} FROM images WHERE id > ? "
                              "ORDER BY id LIMIT ?", [last, batch]).fetchall()
        if not rows:
            return copied
        with dst.transaction():
            _insert(dst, "images", IMAGE_COLS, rows, "id")
        copied += len(rows)
        tick(len(rows))


def _copy_vectors(src: Catalog, dst: Catalog, batch: int, tick, where: str,
                  params: list, resume: bool = False) -> int:
    """Vectors matching `where` after the destination's last key (`resume`) or all of them."""
    copied = 0
    key = dst.conn.db.execute("SELECT image_id, model FROM vectors ORDER BY image_id DESC, "
                              "model DESC LIMIT 1").fetchone() if resume else None
    last_id, last_model = (key[0], key[1]) if key else (-1, "")
    while True:
        rows = src.conn.db.execute(
            f"SELECT {', '.join(VECTOR_COLS)} FROM vectors WHERE (image_id > ? OR (image_id = ? "
            f"AND model > ?)){where} ORDER BY image_id, model LIMIT ?",
            [last_id, last_id, last_model, *(params or []), batch]).fetchall()
        if not rows:
            return copied
        with dst.transaction():
            dst.conn.db.conn.executemany(
                f"INSERT INTO vectors ({', '.join(VECTOR_COLS)}) VALUES "
                f"({', '.join('?' * len(VECTOR_COLS))}) ON CONFLICT(image_id, model) DO UPDATE "
                "SET space = excluded.space, dim = excluded.dim, vector = excluded.vector, "
                "created_at = excluded.created_at, seq = excluded.seq, origin = excluded.origin, "
                "uncertainty = excluded.uncertainty", [tuple(r) for r in rows])
        last_id, last_model = rows[-1][0], rows[-1][1]
        copied += len(rows)
        tick(len(rows))


def fingerprint(cat: Catalog) -> dict[str, dict]:
    """Per table: rows and a SHA-256 of every row in key order (vectors by their bytes)."""
    out = {}
    tables = {"images": (IMAGE_COLS, "id"), "vectors": (VECTOR_COLS, "image_id, model"),
              **SMALL}
    for table, (cols, order) in tables.items():
        h, n = hashlib.sha256(), 0
        for rows in cat.stream(f"SELECT {', '.join(cols)} FROM {table} ORDER BY {order}", [],
                               5000):
            for r in rows:
                h.update(repr(tuple(bytes(v) if isinstance(v, (bytes, memoryview)) else v
                                    for v in r)).encode())
                n += 1
        out[table] = {"rows": n, "sha256": h.hexdigest()}
    return out


def copy_catalog(src: Catalog, dst: Catalog, batch: int = 2000,
                 tick: Callable[[int], None] = lambda n: None) -> dict:
    """Copy `src` into `dst` (empty, or a copy of `src` that was interrupted): see the module."""
    source_id = src.state.gallery_id()
    if dst.state.get_state(MARK) != source_id:
        if dst.conn.db.execute("SELECT EXISTS (SELECT 1 FROM images)").fetchone()[0] or \
                dst.state.get_state(dst.state.ACTIVE_MODEL) is not None:
            raise GalleryError(f"the catalog at {dst.location} already holds a gallery: "
                               "migrate into an empty one (nothing was changed)")
        with dst.transaction():
            dst.state.set_state(MARK, source_id)
    images = _copy_images(src, dst, batch, tick)
    copied_ids = dst.conn.db.execute("SELECT coalesce(max(id), 0) FROM images").fetchone()[0]
    vectors = _copy_vectors(src, dst, batch, tick, " AND image_id <= ?", [copied_ids], True)
    with src.transaction():  # writers wait: nothing changes under the last step
        images += _copy_images(src, dst, batch, tick)
        for space, in src.conn.db.execute("SELECT space FROM spaces").fetchall():
            newest = dst.conn.db.execute(
                "SELECT coalesce(max(seq), 0) FROM vectors WHERE space = ?", [space]).fetchone()[0]
            vectors += _copy_vectors(src, dst, batch, tick, " AND space = ? AND seq > ?",
                                     [space, newest])
        with dst.transaction():
            for table, (cols, _) in SMALL.items():
                dst.conn.db.execute(f"DELETE FROM {table}")
                rows = src.conn.db.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall()
                _insert(dst, table, cols, rows, SMALL[table][1])
            dst.conn.reset_ids()
        before, after = fingerprint(src), fingerprint(dst)
    wrong = [t for t in before if before[t] != after[t]]
    if wrong:
        raise GalleryError(f"the copy at {dst.location} differs from {src.location} in "
                           f"{', '.join(wrong)}: run the same command again (it resumes)")
    return {"from": src.location, "to": dst.location, "copied": {"images": images,
            "vectors": vectors}, "tables": after, "verified": True}
