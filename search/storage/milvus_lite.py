"""Connecting to Milvus: a server by URL, or a Milvus Lite file (one process at a time, its
in-process server stopped when the last client closes; a damaged file is said, not crashed on)."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from pathlib import Path

from models.settings import Settings

from search.errors import GalleryError

REPAIR = "graceful check --repair moves it aside and rebuilds it from the catalog"


class LiteDamaged(GalleryError):
    """A Milvus Lite folder that cannot be read or holds what Graceful did not write: `check`
    reports it, `check --repair` moves it aside and rebuilds the collections from the catalog."""

    def __init__(self, uri: str, reason: str):
        self.uri, self.reason = uri, reason
        super().__init__(f"the Milvus Lite file {uri} is damaged or unreadable ({reason}): {REPAIR}")


def is_local(uri: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*://", uri)


_lite_users: dict[str, int] = {}  # open clients per Milvus Lite file in this process
_lite_lock = threading.Lock()  # held across wait + connect + count, and uncount + release


def _release_lite(uri: str) -> None:
    """Stop the in-process Milvus Lite server of `uri` when its last client closes, so that the
    file's lock goes back (another process may open the gallery then)."""
    key = os.path.abspath(uri)
    with _lite_lock:
        _lite_users[key] = _lite_users.get(key, 1) - 1
        if _lite_users[key] > 0:
            return
        del _lite_users[key]
        _stop_lite_server(key)


def _stop_lite_server(key: str) -> None:
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:  # pragma: no cover
        return
    server_manager_instance.release_server(key)


def _lite_layout_problem(uri: str) -> str | None:
    """Milvus Lite (3.x) keeps a folder at the .db path (LOCK, collections/, ...). A regular
    file there (a 0-byte or cut file, one of an older Milvus Lite, a copy gone wrong) cannot be
    opened."""
    path = Path(uri)
    if os.path.lexists(path) and not path.is_dir():
        try:
            size = path.stat().st_size
            return f"a {size}-byte file where Milvus Lite keeps a folder"
        except OSError as e:
            return f"not a folder ({e.strerror})"
    return None


def connect(uri: str):
    """A MilvusClient for `uri`, with the errors a user can act on said in one line."""
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise GalleryError("this gallery keeps its vectors in Milvus: install the extra "
                           "(pip install 'graceful[milvus]')") from None
    local = is_local(uri)
    if local:
        try:
            import milvus_lite  # noqa: F401
        except ImportError:
            raise GalleryError("a Milvus Lite file needs milvus-lite: pip install "
                               "'graceful[milvus]'") from None
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        if (why := _lite_layout_problem(uri)) is not None:
            raise LiteDamaged(uri, why)
    for name in ("pymilvus", "milvus_lite"):  # quiet library defaults; errors are said below
        logging.getLogger(name).setLevel(logging.CRITICAL)
    with (_lite_lock if local else contextlib.nullcontext()):
        key = os.path.abspath(uri)
        if local and key not in _lite_users:
            _wait_for_lite_lock(uri)
        try:
            client = MilvusClient(uri=uri, token=Settings.from_env().milvus_token)
        except Exception as e:  # pymilvus raises its own types, or a bare one from milvus-lite
            text = str(getattr(e, "message", "") or e).splitlines()[0] if str(e) else repr(e)
            if local:
                _stop_lite_server(key)  # a half-started one would be reused for this path
                raise LiteDamaged(uri, f"cannot open it: {text}") from None
            raise GalleryError(f"cannot reach Milvus at {uri}: {text}") from None
        if local:
            _lite_users[key] = _lite_users.get(key, 0) + 1
    return client


def _wait_for_lite_lock(uri: str) -> None:
    """Milvus Lite lets one process at a time open a file. Wait for another process to let go
    as long as a busy catalog is waited for, then say so. (Called with _lite_lock held, when
    this process does not hold the file.)"""
    import fcntl
    import time

    from search.storage.catalog import db_timeout

    lock = Path(os.path.abspath(uri)) / "LOCK"
    if not lock.exists():
        return
    deadline = time.monotonic() + db_timeout()
    while True:
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise GalleryError(
                    f"the gallery's Milvus Lite file {uri} is open in another process (Milvus "
                    "Lite serves one process at a time): close the app or the other command "
                    "using this gallery, or serve the gallery from a Milvus server "
                    "(graceful reindex --store milvus --milvus-uri http://HOST:19530)") from None
            time.sleep(0.2)
        finally:
            os.close(fd)
