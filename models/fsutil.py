"""Crash-safe file writes (temp file in the same folder, fsync, atomic replace) and the one
safe reader of files a user names (regular files only, size checked before reading)."""
from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path


class FileRefused(ValueError):
    """A path that is not a readable regular file of an acceptable size; str(e) is one line."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer's pid in the name: remove_stale_temp_files knows a killed writer's leftovers
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_TEMP = re.compile(r"^\..+\.(\d+)\.[A-Za-z0-9_]+\.tmp$")


def remove_stale_temp_files(folder: Path, older_than: float = 3600.0,
                            dry_run: bool = False) -> list[Path]:
    """Remove the temp files atomic_write_bytes left in `folder` when its writer was killed
    (kill -9 during a save of a large index or checkpoint): those of processes no longer
    running, and unnamed ones older than `older_than` seconds. A live writer's file is never
    touched. `dry_run`: only list them."""
    import time

    removed: list[Path] = []
    try:
        candidates = [p for p in Path(folder).iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
    except OSError:
        return removed
    for p in candidates:
        m = _TEMP.match(p.name)
        try:
            if m:
                pid = int(m.group(1))
                if pid == os.getpid() or _alive(pid):
                    continue
            elif time.time() - p.stat().st_mtime < older_than:
                continue
            if not dry_run:
                p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _size(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n} bytes"


def check_regular_file(path, limit: int) -> int:
    """The size of `path` if it is a regular file of at most `limit` bytes, else FileRefused.
    Opens non-blocking (a FIFO never hangs) and never reads."""
    fd = _open(path)
    try:
        return checked_size(fd, limit)
    finally:
        os.close(fd)


def read_regular_file(path, limit: int) -> bytes:
    """The bytes of `path`: a regular file only (no device, FIFO, socket or folder), its size
    checked with fstat before reading, at most `limit` bytes even if it grows meanwhile."""
    fd = _open(path)
    try:
        checked_size(fd, limit)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise FileRefused(f"file too large (> {_size(limit)})")
        return data
    except OSError as e:
        raise FileRefused(f"unreadable: {e.strerror or e}") from None
    finally:
        os.close(fd)


def _open(path) -> int:
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except IsADirectoryError:
        raise FileRefused("a folder, not a file") from None
    except OSError as e:
        raise FileRefused(f"unreadable: {e.strerror or e}") from None


def checked_size(fd: int, limit: int) -> int:
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        raise FileRefused("a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused("not a regular file (device, pipe or socket)")
    if st.st_size > limit:
        raise FileRefused(f"file too large ({_size(st.st_size)} > {_size(limit)})")
    return st.st_size
