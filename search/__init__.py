"""Graceful's engine, importable: `from search import Gallery`.

    g = Gallery.open("~/photos-index")   # created if missing
    g.add(["~/Pictures"])                # files or folders, any iterable
    g.search("query.jpg", k=5)
    g.upgrade("lite2-compat-lite0")
    g.albums.list(), g.photos.count(), g.models.available(), g.reports.fit()   # nouns: handles

Layers, each importing only those below it: settings/errors/units/render (base) <- storage
(catalog, image store, vector stores) <- core (the open gallery) <- ops (one module per
operation) <- api (`Gallery` holds the core: one verb per operation, nouns as handles; jobs) <- faces (cli, and the
app: app.py over ui). Everything is quiet by default; the CLI and the app switch progress on.
Heavy modules load on first use, so importing this package is cheap.
"""
from __future__ import annotations

__all__ = ["Gallery", "GalleryError", "SearchResult", "SearchHit"]


def __getattr__(name: str):
    if name in __all__:
        from search import api

        return getattr(api, name)
    raise AttributeError(f"module 'search' has no attribute {name!r}")
