"""The classic path for an incompatible model: re-embed everything into a second index built
alongside, while searches keep using the current one; switch atomically when complete."""
from __future__ import annotations

from typing import Callable

from search.core import GalleryCore
from search.errors import GalleryError
from search.ops.embedjob import JobProgress, embed_stored
from search.ops.raypool import RayOptions


def pending(gallery: GalleryCore, space: str) -> list[int]:
    return gallery.catalog.images.images_missing_in_space(space)


def reembed(gallery: GalleryCore, name: str, batch_size: int = 16,
            switch: bool = True, should_stop: Callable[[], bool] | None = None,
            on_progress: Callable[[JobProgress], None] | None = None,
            ray: RayOptions | None = None) -> tuple[JobProgress, bool]:
    """Returns the job's progress and whether the gallery switched to the new model."""
    model = gallery.load_model(name)
    if gallery.active_model is None:
        raise GalleryError("the gallery has no model yet: index photos first")
    if model.name == gallery.active_model:
        raise GalleryError(f"{model.name} is already the active model")
    if model.space == gallery.space:
        raise GalleryError(f"{model.name} is compatible with this gallery: use `graceful upgrade "
                           f"{model.name}` (instant, nothing to re-embed)")
    gallery.register(model)
    todo = pending(gallery, model.space)
    state = embed_stored(gallery, model, todo, f"reembed:{model.name}", batch_size,
                         should_stop, on_progress, ray=ray)
    switched = False
    if switch and not state.interrupted and not pending(gallery, model.space):
        gallery.activate(model, "reembed-switch")
        switched = True
    return state, switched
