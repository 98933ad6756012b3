"""Upgrade and roll back the query model of a gallery, without recomputing a single vector.

`upgrade` switches the active model when it outputs into the gallery's space, after a pre-flight
check on a sample of the gallery; it is one transaction and its cost does not grow with the
gallery. A model of another space takes the classic path instead (`search.reembed`).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from search.core import GalleryCore
from search.errors import GalleryError
from search.ops.preflight import PREFLIGHT_SAMPLE, Preflight, fit_measurement, preflight
from search.units import duration_text


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
    transform: bool = False  # the gallery was moved into the model's own space
    vectors_transformed: int = 0
    photos_embedded: int = 0
    seconds: float = 0.0  # the whole upgrade, pre-flight and transform included
    warnings: list[str] = field(default_factory=list)  # what the path loses (plan flags)
    recommended: str | None = None  # the path the model's fit recommended, if it was fitted
    mode: str = "queries"  # how the gallery serves afterwards: native, queries or fused

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


def next_step(gallery: GalleryCore, model, check: Preflight) -> dict:
    """The gallery-fitted path, with its estimated time next to a full backfill's."""
    from search.ops.fit_sample import NOMINAL_IMAGES_PER_SECOND, estimate_seconds
    from search.units import fit_name

    backbone = getattr(getattr(model, "meta", None), "backbone", None) or model.name
    if backbone == gallery.active_model or backbone == gallery.space:
        backbone = STRONGER_BACKBONE  # its backbone is the gallery's own model: nothing to gain
    photos = gallery.catalog.images.count_images()
    est = estimate_seconds(photos, check.images_per_second
                           or NOMINAL_IMAGES_PER_SECOND.get(backbone, 30.0))
    command = f"graceful train --from-gallery --backbone {backbone} --out {fit_name(backbone, gallery.active_model)}"
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


def upgrade(gallery: GalleryCore, name: str, force: bool = False, dry_run: bool = False,
            sample: int = PREFLIGHT_SAMPLE, transform: bool = False,
            should_stop=None, on_progress=None, mode: str | None = None,
            weight: float | None = None) -> UpgradeResult:
    """Switch to `name` after its pre-flight. With `transform`, first move every stored vector
    into the model's own space by its gallery transform (resumable), then switch to it. A model
    of another space goes through a label-free bridge (search.ops.modes): `mode` native, queries
    or fused (default: the bridge's recommended path), `weight` the old space's share in fused."""
    from search.ops import modes

    t_start = time.perf_counter()
    model = gallery.load_model(name)  # unknown / corrupt / mismatching: GalleryError, nothing changed
    current = gallery.active_model
    if current is None:
        raise GalleryError("the gallery has no model yet: index photos first")
    if mode is not None and mode not in modes.MODES:
        raise GalleryError(f"unknown mode {mode!r}; choose from {', '.join(modes.MODES)}")
    space = gallery.require_space()
    bridge = fitted = None
    if modes.is_bridge(model) and (mode in ("native", "fused") or transform):
        bridge = model
    elif model.info.kind == "fused":
        _, bridge_name, weight = modes.parse_fused(model.name)
        bridge, mode = gallery.load_model(bridge_name), "fused"
    elif model.space != space and not modes.is_bridge(model):
        if modes.complete_space(gallery, model.space) and mode in (None, "native"):
            result = UpgradeResult(model.name, current, space, False, dry_run, False, None, 0.0)
            if not dry_run:
                modes.switch_native(gallery, model, result)
            result.seconds = round(time.perf_counter() - t_start, 3)
            return result
        found = modes.find_bridge(gallery, model.name)
        if found is None:
            if dry_run:
                raise GalleryError(modes.no_bridge_message(gallery, model))
            found = fitted = fit_bridge_for(gallery, model, should_stop, on_progress)
        bridge = gallery.load_model(found)
        fit = bridge.meta.metrics.get("bridge") or {}  # type: ignore[attr-defined]
        mode = mode or modes.PATH_MODE.get(fit.get("recommended") or "")
        if mode is None:
            raise GalleryError(f"{found}'s plan does not recommend a bridged path for this gallery "
                               f"({fit.get('recommendation', '')}); choose one with --mode "
                               f"native|queries|fused, or graceful reembed {model.name}")
        if mode == "queries":
            model, bridge = bridge, None
    elif mode == "fused" and (blended := modes.blend_of(gallery, model, weight)) is not None:
        model = blended  # same space: the head's and the old model's queries together
    elif mode == "fused":
        raise GalleryError(f"--mode fused searches the old space and a new model's together: "
                           f"fit a bridge to a model of another space first (graceful train "
                           f"--from-gallery --backbone B --out NAME), then graceful upgrade NAME "
                           f"--mode fused")
    if bridge is not None:
        result = UpgradeResult(bridge.name, current, space, False, dry_run, False, None, 0.0)
        if fitted:
            result.notes.append(f"no bridge to {name} yet: fitted {bridge.name} first "
                                f"(graceful train --from-gallery --backbone {name} --out "
                                f"{bridge.name}); its plan chose the {mode} path")
        modes.bridge_upgrade(gallery, bridge, mode or "native", weight, force, dry_run, result,
                             should_stop, on_progress)
        result.seconds = round(time.perf_counter() - t_start, 3)
        return result
    if model.name == current and not (transform and gallery.space != model.name):
        raise GalleryError(f"{model.name} is already the active model"
                           + (" and serves from its own space" if transform else ""))
    if model.space != space:
        raise GalleryError(
            f"{model.name} outputs into space {model.space!r}, but the gallery's vectors live in "
            f"{space!r}: they cannot be compared. Train a compatible model "
            f"(graceful train --old {current} --backbone ... --method bct) or re-embed the whole "
            f"gallery alongside, searching the old index meanwhile: graceful reembed {model.name}"
        )
    space_dim = gallery.catalog.vectors.space_dim(space)
    if space_dim is not None and model.dim != space_dim:
        raise GalleryError(f"{model.name} gives {model.dim}-d vectors, but space {space!r} holds "
                           f"{space_dim}-d ones: it cannot search this gallery")
    gallery_transform = None
    if transform:
        gallery_transform = getattr(model, "gallery_transform", lambda: None)()
        if gallery_transform is None:
            raise GalleryError(
                f"{model.name} carries no gallery transform: fit one to this gallery (graceful "
                f"train --from-gallery --backbone B --out NAME), then upgrade --transform to it")
        if gallery_transform.spec.get("input_space", space) != space:
            raise GalleryError(
                f"{model.name}'s gallery transform maps vectors of space "
                f"{gallery_transform.spec['input_space']!r}; this gallery serves {space!r}")
    check = preflight(gallery, model, sample, path="transform" if transform else "queries",
                      transform=gallery_transform)
    result = UpgradeResult(model.name, current, space, False, dry_run, force and not check.passed,
                           check, 0.0, transform=transform)
    if fitted:
        result.notes.append(f"no bridge to {name} yet: fitted {model.name} first; its plan "
                            f"chose its query map (the queries path)")
    fit = fit_measurement(model)
    if fit is not None:
        result.recommended = fit.get("recommended")
    result.warnings = list(check.flags)
    wanted = "transform" if transform else "queries"
    if fit is not None and result.recommended and result.recommended != wanted and check.passed:
        how = {"transform": f"graceful upgrade {model.name} --transform",
               "backfill": f"graceful upgrade {model.name} --transform, then graceful backfill",
               "queries": f"graceful upgrade {model.name}"}[result.recommended]
        result.notes.append(f"the fit of {model.name} recommends the {result.recommended} path "
                            f"({how}): {fit.get('recommendation', '')}")
    if not check.passed:
        result.next_step = step = next_step(gallery, model, check)
        if not force:
            lines = "".join(f"\n  {r}" for r in check.reasons)
            raise PreflightRefused(
                f"pre-flight check refused {model.name} for this gallery. {check.expectation}"
                f"{lines}\n{step['text']}\n--force switches anyway.", result)
    if dry_run:
        result.notes.append("dry run: nothing changed")
        result.seconds = round(time.perf_counter() - t_start, 3)
        return result
    if transform:
        return _transform(gallery, model, gallery_transform, result, t_start,
                          should_stop, on_progress)
    t0 = time.perf_counter()
    gallery.activate(model, "upgrade")
    result.switch_ms = round((time.perf_counter() - t0) * 1000, 3)
    result.changed, result.mode = True, modes.mode_of(gallery, model)
    result.notes.append(f"queries now use {model.name}; new photos are embedded by it; "
                        f"existing vectors stay as they are (graceful backfill re-embeds them, optional)")
    result.seconds = round(time.perf_counter() - t_start, 3)
    return result


def _transform(gallery: GalleryCore, model, gallery_transform, result: UpgradeResult, t_start: float,
               should_stop, on_progress) -> UpgradeResult:
    from search.ops.transform import transform_gallery

    state, switched = transform_gallery(gallery, model, gallery_transform,
                                        should_stop=should_stop, on_progress=on_progress)
    result.vectors_transformed = state.done
    result.seconds = round(time.perf_counter() - t_start, 3)
    if not switched:
        result.notes.append(f"interrupted after moving {state.done} of {state.total} vectors: "
                            f"search still uses {result.previous}; run the same command again "
                            f"to continue (vectors already moved are kept)")
        return result
    result.changed, result.space, result.mode = True, gallery.require_space(), "native"
    result.switch_ms = 0.0
    kind = "its head (exact)" if gallery_transform.exact else "a learned map"
    result.notes.append(
        f"moved {state.done} stored vectors into {model.name}'s own space by {kind} in "
        f"{duration_text(state.seconds)}, 0 photos embedded; queries now use {model.name}; the "
        f"{result.previous} vectors stay (rollback is instant)"
        + ("" if gallery_transform.exact else
           "; graceful backfill --order uncertainty replaces mapped vectors with real "
           "embeddings, the most uncertain first"))
    return result


def fit_bridge_for(gallery: GalleryCore, model, should_stop=None, on_progress=None) -> str:
    """`upgrade B` with no bridge to B yet: fit one (named B-bridge, or B-bridge-2, ...) and
    return its name; the upgrade then takes the path its plan recommends."""
    from search.ops.bridge import fit_bridge
    from search.ops.fit import FitRequest

    taken = {e.name for e in gallery.model_entries()}
    name, n = f"{model.name}-bridge", 1
    while name in taken:
        n += 1
        name = f"{model.name}-bridge-{n}"
    fit_bridge(gallery, FitRequest(model.name, name, "bridge", on_progress=on_progress,
                                   should_stop=should_stop))
    return name



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


def rollback(gallery: GalleryCore, attempts: int = 5) -> RollbackResult:
    """Pop the model history and activate the model on top. The history and the active model
    are read again and written inside one write transaction (BEGIN IMMEDIATE): an upgrade or
    rollback committed by another process while the model was loading is never overwritten
    with a stale copy; the rollback then undoes whatever is newest."""
    for _ in range(attempts):
        history = gallery.catalog.models.model_history()
        if not history:
            raise GalleryError("nothing to roll back to: this gallery has used one model only")
        target = history[-1]
        model = gallery.load_model(target)  # outside the write lock: loading takes seconds
        t0 = time.perf_counter()
        with gallery.catalog.transaction():
            history = gallery.catalog.models.model_history()
            current = gallery.active_model
            if history and history[-1] == target:
                gallery.register(model)
                gallery.catalog.models.set_model_history(history[:-1])
                gallery.catalog.models.set_active_model(target)
                gallery.catalog.logs.log_event("rollback", model=target, previous=current,
                                               space=model.space)
                break
        if not history:  # another process rolled back the last step meanwhile
            raise GalleryError("nothing to roll back to: this gallery has used one model only")
    else:
        raise GalleryError("the gallery's model kept changing while rolling back (another "
                           "upgrade or rollback is running): run graceful rollback again")
    ms = (time.perf_counter() - t0) * 1000
    assert current is not None  # a model history is written by `activate`, with a model active
    space = gallery.require_space()
    kept = gallery.catalog.vectors.count_vectors(current, space)
    missing = len(gallery.catalog.images.images_missing_in_space(space))
    return RollbackResult(target, current, space, kept, missing, round(ms, 3))
