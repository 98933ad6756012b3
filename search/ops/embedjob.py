"""Re-embed stored gallery images with a model, batch by batch (backfill and re-embed share it).

Each batch is one transaction; the live index is updated after each commit, so searches stay
consistent and available. Killing the job loses at most the batch in flight; progress is
derived from the catalog, so re-running resumes.
"""
from __future__ import annotations

import time
from contextlib import closing
from typing import Callable

import numpy as np

from models.embedder import Embedder
from models.imageio import BadImage, decode
from models.pipeline import prefetch_map
from models.progress import Progress

from search.core import GalleryCore
from search.ops.raypool import RayOptions, embedded

JobProgress = Progress  # the name this module has always exported


def embed_stored(gallery: GalleryCore, model: Embedder, image_ids: list[int], job: str,
                 batch_size: int = 16,
                 should_stop: Callable[[], bool] | None = None,
                 on_progress: Callable[[JobProgress], None] | None = None,
                 ray: RayOptions | None = None) -> JobProgress:
    """With `ray`, Ray workers decode and embed the stored bytes this process reads. A head on a
    backbone it did not fine-tune takes the features the feature cache holds (a fit's sample,
    a pre-flight's) instead of decoding those photos (search/ops/reuse.py): they are committed
    with the decoded batch that follows them in the job's order."""
    from search.ops.reuse import backbone_cache, head_on_frozen_backbone, projected

    state = JobProgress(job, model.name, len(image_ids))
    rows = gallery.catalog.images.images(image_ids)
    image_ids = [i for i in image_ids if i in rows]
    head = head_on_frozen_backbone(model) if ray is None else None

    def load(image_id: int):
        row = rows[image_id]
        try:
            data = gallery.store.read(row.sha256, row.ext)
            if ray is not None:
                return image_id, data
            return image_id, model.preprocess(decode(data, model.info.image_size).image)
        except (OSError, BadImage):
            return image_id, None

    gallery.index(gallery.space_for(model))
    t0 = time.perf_counter()

    def loaded(ids: list[int]):
        for image_id, tensor in prefetch_map(load, ids):
            if tensor is None:  # missing or damaged store file
                state.failed += 1
                continue
            yield image_id, tensor

    def write(batch_ids: list[int], vectors) -> bool:
        """Commit one batch; False when the job is asked to stop."""
        with gallery.catalog.transaction():
            gallery.write_vectors(batch_ids, vectors, model)
            gallery.catalog.logs.save_job(job, {**state.as_dict(), "done": state.done + len(batch_ids)})
        gallery.sync_written(batch_ids, vectors, model)
        state.tick(state.done + len(batch_ids))
        if on_progress:
            on_progress(state)
        return not (should_stop and should_stop())

    try:  # (the cache's lookup is inside: Ctrl-C there stops the job cleanly too)
        cache = backbone_cache(gallery, head) if head is not None else None
        cached: list[int] = []  # in order: features cached and the store file still there
        if cache is not None:  # (a photo gone is reported as failed, as before)
            missing = set(cache.missing([rows[i].sha256 for i in image_ids]))
            cached = [i for n, i in enumerate(image_ids) if n not in missing
                      and gallery.store.path(rows[i].sha256, rows[i].ext).is_file()]
        known, position = set(cached), {i: n for n, i in enumerate(image_ids)}
        waiting = 0  # cached[:waiting] are committed

        def take(upto: int | None) -> list[int]:
            """The cached photos not committed yet that come before position `upto` (None: all)."""
            nonlocal waiting
            end = waiting
            while end < len(cached) and (upto is None or position[cached[end]] < upto):
                end += 1
            ids, waiting = cached[waiting:end], end
            return ids

        def vectors_of(ids: list[int]) -> np.ndarray:
            assert head is not None and cache is not None
            return projected(head, cache, [rows[i].sha256 for i in ids])

        def commit_cached(ids: list[int]) -> bool:
            return all(write(ids[k:k + batch_size], vectors_of(ids[k:k + batch_size]))
                       for k in range(0, len(ids), batch_size))

        stopped = False
        uncached = [i for i in image_ids if i not in known]
        with closing(embedded(gallery, model, loaded(uncached), batch_size, ray)) as batches:
            for done in batches:
                state.failed += len(done.failed)  # reported by a Ray worker
                ahead = take(min(position[k] for k in done.keys)) if done.keys else []
                whole = len(ahead) - len(ahead) % batch_size  # whole batches go on their own,
                if not commit_cached(ahead[:whole]):  # the rest joins this decoded batch
                    stopped = True
                    break
                joined = ahead[whole:]
                keys = joined + list(done.keys)
                vectors = (np.concatenate([vectors_of(joined), done.vectors]) if joined
                           else done.vectors)
                if keys and not write(keys, vectors):
                    stopped = True
                    break
        state.interrupted = stopped or not commit_cached(take(None))
    except KeyboardInterrupt:
        state.interrupted = True
    finally:
        state.seconds = time.perf_counter() - t0
        gallery.save_indexes()
    if on_progress:
        on_progress(state)
    return state
