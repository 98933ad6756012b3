"""What a gallery holds (`graceful info`) and which query model can search which space."""
from __future__ import annotations

from search.core import GalleryCore
from search.errors import GalleryError


def info(gallery: GalleryCore) -> dict:
    space = gallery.space
    idx = gallery.index(space) if space else None
    return {
        "home": str(gallery.home),
        "catalog": {"kind": gallery.catalog.dialect, "location": gallery.catalog.location},
        "schema_version": gallery.catalog.schema_version,
        "images": gallery.catalog.images.count_images(),
        "albums": sum(1 for a in gallery.catalog.images.albums() if a["album"] is not None),
        "active_model": gallery.active_model,
        "space": space,
        "index": {"space": space, "vectors": idx.ntotal if idx else 0,
                  "dim": idx.dim if idx else None},
        "index_kind": {"setting": gallery.index_kind, "built": idx.kind if idx else None},
        "vector_store": gallery.vector_store.describe(),
        "runtimes": gallery.catalog.state.runtimes(),
        "vectors": gallery.catalog.vectors.vector_counts(),
        "models": gallery.catalog.models.models(),
        "model_history": gallery.catalog.models.model_history(),
        "serving": _serving(gallery, idx),
        "compatibility": compatibility_matrix(gallery),
    }

def _serving(gallery: GalleryCore, idx) -> dict:
    """The serving mode and what carrying its spaces costs: index memory, and for fused mode
    the old and new halves' share of it."""
    from search.ops.modes import serving

    s = serving(gallery)
    s["index_bytes"] = int(idx.ntotal * idx.dim * 4) if idx else 0
    s["search_p50_ms"] = _p50_ms(idx) if idx else None
    s["spaces_held"] = sorted({r["space"] for r in gallery.catalog.vectors.vector_counts()})
    return s


def _p50_ms(idx, n: int = 9) -> float:
    """Median time of one k=10 search of this index (random unit queries: a flat or IVF
    search costs the same whatever the query), the index's share of a search's latency."""
    import time

    import numpy as np

    q = np.random.default_rng(0).normal(size=(n, idx.dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    times = []
    for row in q:
        t0 = time.perf_counter()
        idx.search(row[None], 10)
        times.append(time.perf_counter() - t0)
    return round(float(np.median(times)) * 1000, 3)


def compatibility_matrix(gallery: GalleryCore) -> dict:
    """Query model x gallery space: can its queries search that space's vectors, and what was
    measured when it was trained (checkpoint metrics), if anything."""
    spaces = sorted({r["space"] for r in gallery.catalog.vectors.vector_counts()})
    models = gallery.catalog.models.models()
    cells = {}
    for m in models:
        row = {}
        own = gallery.catalog.models.serving_space(m["name"])
        for space in spaces:
            if space not in (m["space"], own):
                row[space] = {"compatible": False}
                continue
            cell = {"compatible": True, "native": space in (m["name"], own),
                    "transformed": space == own}
            try:
                entry = gallery.resolve_model(m["name"])
                ev = (entry.meta.metrics.get("eval") if entry.meta else None) or {}
                if ev:
                    cell["measured"] = {"data": ev.get("data"), "old/old": ev.get("old/old"),
                                        "new/old": ev.get("new/old")}
            except GalleryError:
                cell["missing"] = True
            row[space] = cell
        cells[m["name"]] = row
    return {"spaces": spaces, "models": [m["name"] for m in models], "cells": cells}
