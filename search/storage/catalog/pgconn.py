"""The PostgreSQL driver side of the catalog (pg.py): psycopg 3 connections from one
psycopg_pool pool per URL and process, `?` placeholders turned into psycopg's, errors turned
into the one line a user sees (an unreachable server, wrong credentials, a missing database,
a lock held too long), and `PgReader`, a worker thread's own connection."""
from __future__ import annotations

import atexit
import functools
import itertools
import logging
import threading
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

from models.settings import Settings

from search.errors import GalleryError


def is_url(location: Any) -> bool:
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


@functools.lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


class CatalogUnreachable(GalleryError):
    """The PostgreSQL server cannot be reached (or went away): one line, nothing lost."""


def _psycopg():
    try:
        import psycopg
    except ImportError:
        raise GalleryError("a postgresql:// catalog needs psycopg: pip install "
                           "'graceful[postgres]'") from None
    return psycopg


def translate(e: Exception, url: str) -> Exception:
    """A psycopg error as the one line a user sees (other errors unchanged)."""
    psycopg = _psycopg()
    where = redacted(url)
    if isinstance(e, psycopg.errors.LockNotAvailable):
        return GalleryError("the gallery is busy: another graceful process has held its write "
                            "lock longer than GRACEFUL_DB_TIMEOUT; run the command again when it "
                            "has finished")
    if isinstance(e, psycopg.OperationalError):
        text = " ".join(str(e).split()) or e.__class__.__name__
        if "password" in text or "authentication" in text:
            return GalleryError(f"the catalog server at {where} refused the credentials "
                                f"({text}): check the user and password in the URL")
        if "does not exist" in text and "database" in text:
            return GalleryError(f"no database at {where} ({text}): create it first "
                                "(createdb), or fix the URL")
        return CatalogUnreachable(
            f"cannot reach the catalog at {where} ({text}); nothing committed is lost: run the "
            "command again when the server is back (the same command resumes)")
    return e


class _Cursor:
    """What the repositories get back from `execute`: a psycopg cursor whose errors are lines."""

    def __init__(self, cursor, url: str):
        self.cursor, self.url = cursor, url

    def __getattr__(self, name):
        return getattr(self.cursor, name)

    def __iter__(self):
        return iter(self.cursor)

    def fetchone(self):
        return self.cursor.fetchone()

    def fetchall(self):
        return self.cursor.fetchall()

    def fetchmany(self, size: int):
        return self.cursor.fetchmany(size)


class PgDatabase:
    """One psycopg connection (autocommit; transactions are explicit BEGIN ... COMMIT) with
    the small interface the repositories use: `execute`, and `conn.execute/executemany`."""

    def __init__(self, conn, url: str):
        self.raw, self.url = conn, url
        self.conn = self  # the repositories write `self.db.conn.execute(...)` for SQLite

    def execute(self, sql: str, params: Any = None) -> _Cursor:
        psycopg = _psycopg()
        try:
            return _Cursor(self.raw.execute(_pg_sql(sql), params or None), self.url)
        except psycopg.OperationalError as e:
            raise translate(e, self.url) from None

    def executemany(self, sql: str, rows) -> _Cursor:
        psycopg = _psycopg()
        cur = self.raw.cursor()
        try:
            cur.executemany(_pg_sql(sql), list(rows))
        except psycopg.OperationalError as e:
            raise translate(e, self.url) from None
        return _Cursor(cur, self.url)

    @property
    def in_transaction(self) -> bool:
        psycopg = _psycopg()
        return self.raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    @property
    def broken(self) -> bool:
        return self.raw.closed or self.raw.broken

    def stream(self, sql: str, params: list, batch: int) -> Iterator[list[tuple]]:
        """Rows in lists of `batch`, through a server-side cursor (binary: bytea as bytes)."""
        psycopg = _psycopg()
        name = f"graceful_stream_{next(_names)}"
        cur = self.raw.cursor(name=name, binary=True, withhold=not self.in_transaction)
        try:
            cur.execute(_pg_sql(sql), params)
            while rows := cur.fetchmany(batch):
                yield rows
        except psycopg.OperationalError as e:
            raise translate(e, self.url) from None
        finally:
            if not self.broken:
                cur.close()


# psycopg and its pool report lost connections as log warnings too; with no logging set up they
# would reach stderr next to the one line the user gets (an app that configures logging still
# receives them)
logging.getLogger("psycopg").addHandler(logging.NullHandler())
_names = itertools.count()
pools: dict[str, Any] = {}
pools_lock = threading.Lock()


def connect(url: str, settings: Settings):
    """A connection from this process's pool for `url` (psycopg_pool), opened after a direct
    probe so that a bad URL, wrong credentials or a server that is down are one line at once."""
    psycopg = _psycopg()
    timeout = max(1, int(min(settings.db_timeout, 10)))
    options = {"autocommit": True, "connect_timeout": timeout}
    with pools_lock:
        pool = pools.get(url)
        if pool is None:
            try:
                psycopg.connect(url, **options).close()
            except psycopg.Error as e:
                raise translate(e, url) from None
            except Exception as e:  # a malformed URL
                raise GalleryError(f"cannot use the catalog URL {redacted(url)}: {e}") from None
            from psycopg_pool import ConnectionPool

            pool = ConnectionPool(url, min_size=1, max_size=16, kwargs=options, timeout=timeout,
                                  name="graceful-catalog", open=True)
            pools[url] = pool
    error: Exception | None = None
    for _ in range(3):  # a pooled connection may have died with a server restart: next one
        try:
            conn = pool.getconn()
        except Exception as e:  # PoolTimeout: the server went away since
            raise CatalogUnreachable(f"cannot reach the catalog at {redacted(url)} ({e}); "
                                     "nothing committed is lost: run the command again when the "
                                     "server is back") from None
        try:
            conn.execute(f"SET lock_timeout = {int(settings.db_timeout * 1000)}")
            return pool, conn
        except psycopg.Error as e:
            pool.putconn(conn)  # a broken one is discarded
            error = e
    assert error is not None  # each of the tries above failed
    raise translate(error, url) from None


def release(url: str) -> None:
    """Close this process's pool for `url` (its idle connections), e.g. before the database is
    copied or dropped; the next open makes a new one."""
    with pools_lock:
        pool = pools.pop(url, None)
    if pool is not None:
        pool.close(timeout=1)


@atexit.register
def _closepools() -> None:
    with pools_lock:
        for pool in pools.values():
            try:
                pool.close(timeout=1)
            except Exception:
                pass
        pools.clear()


class PgReader:
    """`ReadOnlyCatalog` on PostgreSQL: a connection of its own for a worker thread."""

    def __init__(self, url: str):
        psycopg = _psycopg()
        try:
            self.conn = psycopg.connect(url, autocommit=True)
        except psycopg.Error as e:
            raise translate(e, url) from None
        self.url = url

    def stored_ext(self, sha256: str, space: str) -> str | None:
        row = self.conn.execute(
            "SELECT i.ext FROM images i JOIN vectors v ON v.image_id = i.id "
            "WHERE i.sha256 = %s AND v.space = %s LIMIT 1", [sha256, space]).fetchone()
        return row[0] if row else None
