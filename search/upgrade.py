"""Upgrade and roll back the query model of a gallery, without recomputing a single vector.

`upgrade` switches the active model when it outputs into the gallery's space, after a pre-flight
check on a sample of the gallery; it is one transaction and its cost does not grow with the
gallery. A model of another space takes the classic path instead (`search.reembed`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, asdict, field

from .gallery import Gallery, GalleryError
from .preflight import PREFLIGHT_SAMPLE, Preflight, preflight


@dataclass
class UpgradeResult:
    model: str
    previous: str | None
    space: str
    changed: bool
    dry_run: bool
    forced: bool
    preflight: Preflight | None
    switch_ms: float
    vectors_recomputed: int = 0
    notes: list[str] = field(default_factory=list)
    next_step: dict | None = None  # when the pre-flight refuses: the gallery-fitted path

    def as_dict(self) -> dict:
        d = asdict(self)
        d["preflight"] = self.preflight.as_dict() if self.preflight else None
        return d


STRONGER_BACKBONE = "lite2"


class PreflightRefused(GalleryError):
    """The pre-flight check refused the model; `result` holds what it measured and the next step."""

    def __init__(self, message: str, result: UpgradeResult):
        super().__init__(message)
        self.result = result


def next_step(gallery: Gallery, model, check: Preflight) -> dict:
    """The gallery-fitted path, with its estimated time next to a full backfill's."""
    from .fit import estimate_seconds

    backbone = getattr(getattr(model, "meta", None), "backbone", None) or model.name
    if backbone == gallery.active_model or backbone == gallery.space:
        backbone = STRONGER_BACKBONE  # its backbone is the gallery's own model: nothing to gain
    photos = gallery.catalog.count_images()
    est = estimate_seconds(photos, check.images_per_second or 30.0)
    command = f"graceful train --from-gallery --backbone {backbone} --out {backbone}-fit-{gallery.active_model}"
    text = (f"Next step: fit an upgrade to this gallery's own photos ({command}): about "
            f"{duration_text(est['fit_seconds'])}, against {duration_text(est['backfill_seconds'])} for "
            f"re-embedding all {photos} photos.")
    if est["backfill_seconds"] <= est["fit_seconds"]:
        text = (f"Next step: for a gallery this small, re-embedding all {photos} photos with "
                f"{backbone} (graceful reembed {backbone}, about {duration_text(est['backfill_seconds'])}) "
                f"is as quick as fitting an upgrade to it ({command}, about "
                f"{duration_text(est['fit_seconds'])}).")
    est.update({"backbone": backbone, "command": command, "text": text})
    return est


def duration_text(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def upgrade(gallery: Gallery, name: str, force: bool = False, dry_run: bool = False,
            sample: int = PREFLIGHT_SAMPLE) -> UpgradeResult:
    model = gallery.load_model(name)  # unknown / corrupt / mismatching: GalleryError, nothing changed
    current = gallery.active_model
    if current is None:
        raise GalleryError("the gallery has no model yet: index photos first")
    space = gallery.space
    if model.name == current:
        raise GalleryError(f"{model.name} is already the active model")
    if model.space != space:
        raise GalleryError(
            f"{model.name} outputs into space {model.space!r}, but the gallery's vectors live in "
            f"{space!r}: they cannot be compared. Train a compatible model "
            f"(graceful train --old {current} --backbone ... --method bct) or re-embed the whole "
            f"gallery alongside, searching the old index meanwhile: graceful reembed {model.name}"
        )
    space_dim = gallery.catalog.space_dim(space)
    if space_dim is not None and model.dim != space_dim:
        raise GalleryError(f"{model.name} gives {model.dim}-d vectors, but space {space!r} holds "
                           f"{space_dim}-d ones: it cannot search this gallery")
    check = preflight(gallery, model, sample)
    result = UpgradeResult(model.name, current, space, False, dry_run, force and not check.passed,
                           check, 0.0)
    if not check.passed:
        result.next_step = next_step(gallery, model, check)
    if not check.passed and not force:
        lines = "".join(f"\n  {r}" for r in check.reasons)
        raise PreflightRefused(
            f"pre-flight check refused {model.name} for this gallery. {check.expectation}{lines}\n"
            f"{result.next_step['text']}\n--force switches anyway.", result)
    if dry_run:
        result.notes.append("dry run: nothing changed")
        return result
    t0 = time.perf_counter()
    gallery.activate(model, "upgrade")
    result.switch_ms = round((time.perf_counter() - t0) * 1000, 3)
    result.changed = True
    result.notes.append(f"queries now use {model.name}; new photos are embedded by it; "
                        f"existing vectors stay as they are (graceful backfill re-embeds them, optional)")
    return result


@dataclass
class RollbackResult:
    model: str
    previous: str
    space: str
    kept_vectors: int  # vectors computed by the rolled-back model that stay searchable
    need_reembed: int  # images with no vector in the restored space
    switch_ms: float

    def as_dict(self) -> dict:
        return asdict(self)


def rollback(gallery: Gallery, attempts: int = 5) -> RollbackResult:
    """Pop the model history and activate the model on top. The history and the active model
    are read again and written inside one write transaction (BEGIN IMMEDIATE): an upgrade or
    rollback committed by another process while the model was loading is never overwritten
    with a stale copy; the rollback then undoes whatever is newest."""
    for _ in range(attempts):
        history = gallery.catalog.model_history()
        if not history:
            raise GalleryError("nothing to roll back to: this gallery has used one model only")
        target = history[-1]
        model = gallery.load_model(target)  # outside the write lock: loading takes seconds
        t0 = time.perf_counter()
        with gallery.catalog.transaction():
            history = gallery.catalog.model_history()
            current = gallery.active_model
            if history and history[-1] == target:
                gallery.register(model)
                gallery.catalog.set_model_history(history[:-1])
                gallery.catalog.set_active_model(target)
                gallery.catalog.log_event("rollback", model=target, previous=current,
                                          space=model.space)
                break
        if not history:  # another process rolled back the last step meanwhile
            raise GalleryError("nothing to roll back to: this gallery has used one model only")
    else:
        raise GalleryError("the gallery's model kept changing while rolling back (another "
                           "upgrade or rollback is running): run graceful rollback again")
    ms = (time.perf_counter() - t0) * 1000
    kept = gallery.catalog.count_vectors(current, model.space)
    missing = len(gallery.catalog.images_missing_in_space(model.space))
    return RollbackResult(target, current, model.space, kept, missing, round(ms, 3))
