"""Turn the faults a user can hit (full disk, permissions, a busy or damaged catalog) into one
line that says what happened and what to do next. The CLI and the app both use it."""
from __future__ import annotations

import errno
import sqlite3


class GalleryError(RuntimeError):
    """A user-facing error: the message says what is wrong and what to do."""


DISK_FULL = ("the disk is full{where}: free some space and run the command again (nothing "
             "written so far is lost; the gallery stays as it was before the failed step)")


def friendly(e: BaseException) -> str:
    """One line for an OSError or SQLite error; other errors keep their own message."""
    if isinstance(e, OSError):
        where = f" (writing {e.filename})" if getattr(e, "filename", None) else ""
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return DISK_FULL.format(where=where)
        if e.errno in (errno.EACCES, errno.EPERM):
            return (f"permission denied{where or ''}: {e.filename or 'a gallery file'} is not "
                    "writable by this user; fix its permissions or use another --home")
        if e.errno == errno.EROFS:
            return ("the gallery is on a read-only file system: searching works, changes need a "
                    "writable --home")
        return f"{e.strerror or e}{where}"
    if isinstance(e, sqlite3.OperationalError):
        text = str(e)
        if "locked" in text or "busy" in text:
            return ("the gallery is busy: another graceful process has held its write lock for "
                    "over 30 s; run the command again when it has finished")
        if "disk is full" in text or "disk I/O" in text:
            return DISK_FULL.format(where=" (catalog.db)")
        if "readonly" in text or "read-only" in text:
            return ("catalog.db is read-only for this user: searching works, changes need write "
                    "access")
    if isinstance(e, sqlite3.DatabaseError):
        return (f"the catalog (catalog.db) is damaged: {e}. Restore catalog.db from a backup; the "
                "photos in images/ are intact and can be indexed into a new gallery "
                "(graceful --home NEW index HOME/images)")
    return str(e) or e.__class__.__name__


HANDLED = (OSError, sqlite3.Error)
