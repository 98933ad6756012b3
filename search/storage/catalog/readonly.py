"""Opening the catalog for reading when the disk is full.

A WAL catalog needs its shared-memory file (`catalog.db-shm`, 32 KiB) before the first read;
on a disk with no byte free SQLite cannot size it and every open fails ("disk I/O error"), even
for `info` or `search`. Reads then fall back to a read-only connection: `mode=ro` (which uses
the existing -shm file when it is whole), else `immutable=1`, which reads the main file alone
and is used only when the WAL holds nothing (a closed gallery: its WAL is missing or empty), so
nothing committed is missed. Writes through such a connection fail as a full disk, which is
what they are.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.request import pathname2url

DISK_FULL_TEXT = "database or disk is full (the catalog could only be opened for reading)"


def disk_full(e: BaseException) -> bool:
    """Whether an error opening the catalog is a full disk (or the I/O error SQLite reports
    when it cannot size the WAL's shared-memory file)."""
    text = str(e)
    return isinstance(e, sqlite3.OperationalError) and ("disk is full" in text or "disk I/O" in text)


def _translated(e: sqlite3.OperationalError) -> sqlite3.OperationalError:
    text = str(e)
    if "readonly" in text or "read-only" in text:
        return sqlite3.OperationalError(DISK_FULL_TEXT)
    return e


class _Cursor(sqlite3.Cursor):
    def execute(self, *args, **kwargs):
        try:
            return super().execute(*args, **kwargs)
        except sqlite3.OperationalError as e:
            raise _translated(e) from None

    def executemany(self, *args, **kwargs):
        try:
            return super().executemany(*args, **kwargs)
        except sqlite3.OperationalError as e:
            raise _translated(e) from None


class ReadOnlyConnection(sqlite3.Connection):
    """A connection that reports an attempted write as a full disk (it was opened read-only
    because the disk is full), so every command says what the user must do."""

    def cursor(self, factory=_Cursor):
        return super().cursor(factory)

    def execute(self, *args, **kwargs):
        return self.cursor().execute(*args, **kwargs)

    def executemany(self, *args, **kwargs):
        return self.cursor().executemany(*args, **kwargs)

    def executescript(self, *args, **kwargs):
        try:
            return super().executescript(*args, **kwargs)
        except sqlite3.OperationalError as e:
            raise _translated(e) from None


def open_for_reading(path: Path, timeout: float) -> sqlite3.Connection | None:
    """A read-only connection to the catalog at `path` that can read now, or None."""
    url = pathname2url(str(Path(path).resolve()))
    wal = Path(f"{path}-wal")
    modes = ["mode=ro"]
    try:
        if not wal.exists() or wal.stat().st_size == 0:
            modes.append("immutable=1")
    except OSError:
        pass
    for mode in modes:
        conn = None
        try:
            conn = sqlite3.connect(f"file:{url}?{mode}", uri=True, timeout=timeout,
                                   check_same_thread=False, isolation_level=None,
                                   factory=ReadOnlyConnection)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.Error:
            if conn is not None:
                conn.close()
    return None
