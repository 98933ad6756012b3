"""`graceful migrate-catalog TO`: the gallery's catalog copied into another one (SQLite ↔
PostgreSQL), resumable and verified (search.storage.catalog.transfer)."""
from __future__ import annotations

from typing import Callable

from models.progress import Progress

from search.core import GalleryCore
from search.errors import GalleryError
from search.storage.catalog import catalog_location, open_catalog
from search.storage.catalog.transfer import copy_catalog


def migrate_catalog(gallery: GalleryCore, to: str,
                    on_progress: Callable[[Progress], None] | None = None) -> dict:
    """Copy this gallery's catalog to `to` (a postgresql:// URL or a SQLite file path); the
    gallery itself keeps using its catalog until the setting names the new one."""
    location = catalog_location(gallery.home, to)
    if str(location) == str(gallery.catalog.path):
        raise GalleryError("the destination is this gallery's own catalog: name another one")
    src = gallery.catalog
    total = src.images.count_images() + sum(r["vectors"] for r in src.vectors.vector_counts())
    state = Progress("migrate", total=total)

    def tick(n: int) -> None:
        if on_progress:
            on_progress(state.tick(state.done + n))

    dst = open_catalog(gallery.home, location, gallery.settings, create=True)
    try:
        report = copy_catalog(src, dst, tick=tick)
    finally:
        dst.close()
    report["use"] = f"GRACEFUL_CATALOG={report['to']} (or --catalog {report['to']})"
    return report
