"""Optional, progressive backfill: re-embed the vectors of older models with the active one.

After a compatible upgrade nothing *needs* recomputing; backfill only lifts quality further.
Images with no vector in the active space at all (after a rollback across spaces) come first.
The order of the rest: random, oldest, most-retrieved (query log) or uncertainty (stored vectors
whose nearest neighbour is least certain first).
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from search.core import GalleryCore
from search.errors import GalleryError
from search.ops.embedjob import JobProgress, embed_stored
from search.ops.raypool import RayOptions

ORDERS = ("random", "oldest", "most-retrieved", "uncertainty")


def candidates(gallery: GalleryCore, order: str = "random", seed: int = 0) -> tuple[list[int], list[int]]:
    """(images missing from the active space, images to re-embed), ordered: vectors of older
    models in the chosen order, then vectors a learned map made (`upgrade --transform`), the
    largest expected residual first (FastFill-style)."""
    if order not in ORDERS:
        raise GalleryError(f"unknown backfill order {order!r}; choose from {', '.join(ORDERS)}")
    model, space = gallery.active_model, gallery.space
    if model is None or space is None:  # no model yet: no photo has a vector in its space
        return sorted(gallery.catalog.images.album_labels()), []
    missing = gallery.catalog.images.images_missing_in_space(space)
    rows = gallery.catalog.images.images_without_model(space, model)
    mapped = [i for i, _ in gallery.catalog.vectors.transformed_vectors(space, model)]
    stale = [r[0] for r in rows]
    if order == "random":
        stale = list(np.random.default_rng(seed).permutation(stale)) if stale else []
    elif order == "oldest":
        stale = [i for i, _ in sorted(rows, key=lambda r: (r[1], r[0]))]
    elif order == "most-retrieved":
        counts: Counter = Counter()
        for results in gallery.catalog.logs.logged_results():
            counts.update(results)
        stale = sorted(stale, key=lambda i: (-counts.get(i, 0), i))
    elif order == "uncertainty" and stale:
        idx = gallery.index(space)
        assert idx is not None  # the space serves the stale photos
        scores, _ = idx.search(idx.vectors(stale), 3)
        margin = scores[:, 1] - scores[:, 2] if scores.shape[1] >= 3 else scores[:, -1]
        stale = [stale[j] for j in np.argsort(margin, kind="stable")]
    return missing, [int(i) for i in stale] + mapped


class CurveRecorder:
    """Records retrieval quality of labelled queries (embedded once by the active model)
    against the live gallery as backfill progresses: the FastFill-style curve of a real run."""

    def __init__(self, gallery: GalleryCore, queries_dir: Path, points: int = 10):
        from search.ops.compare import embed_queries, gallery_labels, queries_from_folder

        queries = queries_from_folder(queries_dir)
        if not queries or any(q.label is None for q in queries):
            raise GalleryError(f"{queries_dir}: the curve needs labelled queries (one sub-folder per class)")
        self.gallery = gallery
        vectors, ok, model = embed_queries(gallery, gallery.require_active_model(), queries)
        kept = [q for q, q_ok in zip(queries, ok) if q_ok]
        self.vectors, self.space = vectors, gallery.space_for(model)
        self.labels = [q.label for q in kept]
        self.own = [gallery.catalog.images.image_id(q.sha256) for q in kept]
        self.gallery_labels = gallery_labels(gallery)
        self.points = points
        self.curve: list[dict] = []

    def measure(self) -> dict:
        from search.ops.compare import FULL_RANKING_MAX, rank_vectors, relevance_metrics

        n = self.gallery.catalog.images.count_images()
        depth = n if n <= FULL_RANKING_MAX else 100
        ranked = rank_vectors(self.gallery, self.vectors, self.space, depth, self.own)
        rel = [np.array([self.gallery_labels.get(i) == lab for i in r]) for r, lab in zip(ranked, self.labels)]
        point = {"fraction": status(self.gallery)["fraction_backfilled"],
                 **relevance_metrics(rel, "full" if depth >= n - 1 else depth)}
        self.curve.append(point)
        return point

    def report(self) -> dict:
        return {"model": self.gallery.active_model, "queries": len(self.labels),
                "curve": self.curve, "auc_map": area_under_curve(self.curve, "map"),
                "auc_top1": area_under_curve(self.curve, "top1")}


def backfill(gallery: GalleryCore, order: str = "random", limit: int | None = None,
             batch_size: int = 16,
             should_stop: Callable[[], bool] | None = None,
             on_progress: Callable[[JobProgress], None] | None = None,
             curve: CurveRecorder | None = None, ray: "RayOptions | None" = None) -> JobProgress:
    missing, stale = candidates(gallery, order)
    todo = (missing + stale)[: limit if limit is not None else None]
    model = gallery.embedder()
    gallery.catalog.logs.log_event("backfill-start", model=model.name, order=order, todo=len(todo),
                                   missing=len(missing), stale=len(stale))
    progress_cb = on_progress
    if curve is not None:
        curve.measure()
        step = max(1, len(todo) // curve.points)
        next_at, last = [step], [0]

        def progress_cb(state: JobProgress) -> None:
            if state.done != last[0] and (state.done >= next_at[0] or state.done == state.total):
                curve.measure()
                next_at[0], last[0] = state.done + step, state.done
            if on_progress:
                on_progress(state)
    state = embed_stored(gallery, model, todo, "backfill", batch_size, should_stop,
                         progress_cb, ray=ray)
    gallery.catalog.logs.log_event("backfill-stop", **state.as_dict())
    if curve is not None:
        report = {**curve.report(), "order": order, "created_at": time.time()}
        gallery.save_report("backfill-curve", order, report)
    return state


def status(gallery: GalleryCore) -> dict:
    missing, stale = candidates(gallery, "oldest")
    total = gallery.catalog.images.count_images()
    by_active = total - len(missing) - len(stale)
    model, space = gallery.active_model, gallery.space
    mapped = len(gallery.catalog.vectors.transformed_vectors(space, model)) if model and space else 0
    return {"model": model, "space": space, "images": total,
            "by_active_model": by_active, "older_vectors": len(stale) - mapped,
            "transformed": mapped, "missing": len(missing),
            "fraction_backfilled": round(by_active / total, 4) if total else 1.0}


def quality_curve(old_vecs: np.ndarray, new_vecs: np.ndarray, labels: np.ndarray,
                  order: np.ndarray, steps: int = 10) -> list[dict]:
    """FastFill-style curve: new-model queries against a gallery backfilled in `order`.

    Rows i of old_vecs/new_vecs are the same image; queries are all new vectors (leave-one-out)."""
    from models import metrics

    curve = []
    for s in range(steps + 1):
        n = int(round(len(order) * s / steps))
        gallery = old_vecs.copy()
        gallery[order[:n]] = new_vecs[order[:n]]
        r = metrics.evaluate(new_vecs, gallery, labels)
        curve.append({"fraction": round(n / len(order), 4), "top1": round(r.top1, 4),
                      "map": round(r.map, 4)})
    return curve


def area_under_curve(curve: list[dict], key: str = "map") -> float:
    x = np.array([c["fraction"] for c in curve])
    y = np.array([c[key] for c in curve])
    return round(float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2)), 4)


def latest_curve(gallery: GalleryCore) -> dict | None:
    return gallery.latest_report("backfill-curve")
