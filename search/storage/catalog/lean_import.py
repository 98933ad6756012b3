"""sqlite-utils without pandas: it imports pandas where installed, only to accept pandas values
in inserts, which the catalog never makes, and that import is a third of a second of every
command. Hidden from this one import unless something already loaded pandas."""
import sys

_hide = "pandas" not in sys.modules
if _hide:
    sys.modules["pandas"] = None  # type: ignore[assignment]  # `import pandas` -> ImportError
try:
    import sqlite_utils
finally:
    if _hide:
        del sys.modules["pandas"]

__all__ = ["sqlite_utils"]
