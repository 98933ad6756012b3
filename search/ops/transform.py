"""Move the gallery into a model's own space by arithmetic (`graceful upgrade NAME --transform`).

Every vector the gallery serves is mapped into the space of NAME (named after it) by the
model's gallery transform (its head on its own backbone's stored vectors: exact; or a map
learned from pairs: approximate, with an expected residual per vector), in batches of one
transaction each, while searches keep using the current space. A kill loses at most the batch
in flight: the vectors already written stay and a rerun continues with the rest. When nothing
is left, one transaction makes NAME the active model, serving from its new space; the old
vectors stay, so a rollback is as instant as an upgrade. `graceful backfill` later replaces the
mapped vectors with real embeddings, the most uncertain first.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from models.progress import Progress

from search.core import GalleryCore
from search.errors import GalleryError

BATCH = 2048  # vectors per transaction (GRACEFUL_TRANSFORM_BATCH)
ROUNDS = 3  # photos added by another process while the transform ran are taken in later rounds


def transform_space(model) -> str:
    """The space a transform of `model` writes: its own, named after it."""
    return model.name


def transform_gallery(gallery: GalleryCore, model, transform,
                      should_stop: Callable[[], bool] | None = None,
                      on_progress: Callable[[Progress], None] | None = None,
                      batch: int | None = None) -> tuple[Progress, bool]:
    """Map every vector served in the gallery's space into `model`'s own space; switch to it
    when none is left. Returns (progress, switched)."""
    batch = batch or gallery.settings.transform_batch
    source, target = gallery.require_space(), transform_space(model)
    if source == target:
        raise GalleryError(f"the gallery already serves {model.name}'s own space")
    gallery.register(model)
    todo = gallery.catalog.vectors.images_to_transform(source, target)
    state = Progress(f"transform:{model.name}", model.name, len(todo))
    state.stage = "transform"
    t0 = time.perf_counter()
    exact_inputs = transform.input_models() if transform.exact else set()
    try:
        gallery.index(target)
        for _ in range(ROUNDS):
            for s in range(0, len(todo), batch):
                _write_batch(gallery, model, transform, source, target, todo[s:s + batch],
                             exact_inputs, state)
                state.tick(state.done + len(todo[s:s + batch]))
                if on_progress:
                    on_progress(state)
                if should_stop and should_stop():
                    state.interrupted = True
                    return state, False
            todo = gallery.catalog.vectors.images_to_transform(source, target)
            if not todo:
                break
            state.total += len(todo)
    except KeyboardInterrupt:
        state.interrupted = True
        return state, False
    finally:
        state.seconds = time.perf_counter() - t0
        gallery.save_indexes()
    if todo:  # photos kept arriving faster than they were moved
        return state, False
    gallery.activate(model, "transform", space=target)
    if on_progress:
        on_progress(state)
    return state, True


def _write_batch(gallery: GalleryCore, model, transform, source: str, target: str, ids: list[int],
                 exact_inputs: set[str], state: Progress) -> None:
    """One transaction: these images' serving vectors of `source`, moved into `target`."""
    stored = gallery.catalog.vectors.serving_vectors_of(ids, source)
    origins = gallery.catalog.vectors.serving_origins(source, list(stored))
    groups: dict[str | None, list[int]] = {}
    # a fused transform takes a photo's real new vector where the gallery already has one
    new_space = getattr(transform, "new_space", None)
    real = (gallery.catalog.vectors.serving_vectors_of(list(stored), new_space)
            if new_space and gallery.catalog.vectors.space_dim(new_space) else {})
    for i in stored:
        made_by, origin = origins[i]
        if i in real:
            groups.setdefault("known", []).append(i)
        elif made_by == model.name and origin is None:
            groups.setdefault(None, []).append(i)  # already the model's own embedding
        elif made_by in exact_inputs and origin is None:
            groups.setdefault("head", []).append(i)
        else:
            groups.setdefault("map", []).append(i)
    written = []
    with gallery.catalog.transaction():
        for origin, group in groups.items():
            x = np.stack([stored[i] for i in group])
            if origin == "known":
                vectors = transform.apply_known(x, np.stack([real[i] for i in group]))
                origin = None
            else:
                vectors = x if origin is None else transform.apply(x)
            unc = transform.uncertainty(x) if origin == "map" and transform.uncertainty else None
            gallery.catalog.vectors.put_vectors(group, vectors, model.name, target, origin, unc)
            written.append((group, vectors))
        gallery.catalog.logs.save_job(state.job, {**state.as_dict(), "done": state.done + len(ids)})
    for group, vectors in written:
        gallery.sync_index(target, group, vectors, model.name)
    state.failed += len(ids) - len(stored)
