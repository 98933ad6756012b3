"""Serving modes, and upgrades to a model of another space through a label-free bridge.

A gallery serves in one of three modes:
  native   the active model searches its own space (its own embeddings, or stored vectors
           moved into its space by a gallery map: `upgrade BRIDGE --mode native`);
  queries  the active model's queries search another model's space (a compatible model, or a
           bridge's query map: `upgrade BRIDGE`);
  fused    two generations searched together, w * old + (1 - w) * new (`upgrade BRIDGE --mode
           fused`): one space of concatenated vectors, the old space's vectors untouched.
Every switch is one transaction (`GalleryCore.activate`); rollback returns to the previous model.
"""
from __future__ import annotations

import time

from models.bridge import BLEND_PREFIX, FUSED_PREFIX, fused_name, parse_fused

from search.core import GalleryCore
from search.errors import GalleryError
from search.units import duration_text

MODES = ("native", "queries", "fused")
PATH_MODE = {"queries": "queries", "transform": "native", "fused": "fused"}


def serving(gallery: GalleryCore) -> dict:
    """The mode the gallery serves in, the spaces a query searches and their weights."""
    name, space = gallery.active_model, gallery.space
    if name is None:
        return {"mode": None, "spaces": [], "weights": []}
    if name.startswith((FUSED_PREFIX, BLEND_PREFIX)):
        model = gallery.load_model(name)
        return {"mode": "fused", "spaces": list(model.info.extra["spaces"]),
                "weights": [round(w, 4) for w in model.info.extra["weights"]],
                "models": list(model.info.extra["parts"]), "space": space}
    native = space in (name, gallery.catalog.models.serving_space(name))
    return {"mode": "native" if native else "queries", "spaces": [space], "weights": [1.0],
            "models": [name], "space": space}


def mode_of(gallery: GalleryCore, model) -> str:
    if model.info.kind in ("fused", "blend"):
        return "fused"
    return "native" if gallery.space_for(model) in (model.name, gallery.catalog.models.serving_space(model.name)) else "queries"


def is_bridge(model) -> bool:
    meta = getattr(model, "meta", None)
    return meta is not None and meta.method == "bridge"


def find_bridge(gallery: GalleryCore, target: str, from_space: bool = True) -> str | None:
    """The newest bridge in this gallery to model `target` (from the space the gallery serves
    now, unless `from_space` is off)."""
    found = [(e.meta.created_at, e.name) for e in gallery.model_entries()
             if e.meta is not None and e.meta.method == "bridge"
             and e.meta.transform.get("target_model") == target
             and (not from_space or e.meta.transform.get("input_space") == gallery.space)]
    return max(found, key=lambda f: f[0])[1] if found else None


def complete_space(gallery: GalleryCore, space: str) -> bool:
    """Does `space` hold a vector for every photo the gallery serves now?"""
    current = gallery.space
    return (current is not None and gallery.catalog.vectors.space_dim(space) is not None
            and gallery.catalog.vectors.count_served(space) >= gallery.catalog.vectors.count_served(current))


def no_bridge_message(gallery: GalleryCore, model) -> str:
    from search.ops.fit_sample import bridge_sample

    space = gallery.require_space()
    photos = gallery.catalog.vectors.count_served(space)
    n = bridge_sample(photos)
    return (f"{model.name} outputs into space {model.space!r}, but the gallery's vectors live in "
            f"{space!r}. `graceful upgrade {model.name}` fits a label-free bridge first (no "
            f"albums needed; {model.name} embeds about {n} of the {photos} photos) and takes the "
            f"path its plan recommends; or fit it alone: graceful train --from-gallery --backbone "
            f"{model.name} --out {model.name}-bridge; or re-embed the whole gallery alongside, "
            f"searching the old index meanwhile: graceful reembed {model.name}")


def predicted_path(gallery: GalleryCore, name: str) -> tuple[object, str] | None:
    """(the bridge, the plan path) that serving `name` came from: a fused model, a bridge's
    query map, or a model whose space a bridge's gallery map filled; None otherwise."""
    try:
        model = gallery.load_model(name)
    except GalleryError:
        return None
    if model.info.kind == "fused":
        return model.bridge, "fused"  # type: ignore[attr-defined]
    if is_bridge(model):
        return model, "queries"
    found = find_bridge(gallery, name, from_space=False)  # its gallery map filled name's space
    return (gallery.load_model(found), "transform") if found else None


def plan_check(gallery: GalleryCore, new: str, summary: dict) -> dict | None:
    """What the bridge's plan predicted for the path `new` serves by, next to what this
    comparison measured (each gap in the plan's standard errors)."""
    found = predicted_path(gallery, new)
    if found is None:
        return None
    bridge, path = found
    row = plan_row(bridge, path)
    if row is None:
        return None
    measured: dict[str, tuple] = {}
    if summary["k"] == 10:
        measured["kept_old"] = (row["kept_old"], row["kept_old_se"], summary["overlap_at_k"])
    if summary.get("labelled") and "top1" in row:
        se = row["se"]
        measured["top1"] = (row["top1"], se["top1"], summary["new_metrics"]["top1"])
        measured["map"] = (row["map"], se["map"], summary["new_metrics"]["map"])
        measured["lost_at_5"] = (row["lost_at_5"], se["lost_at_5"],
                                 summary["lost_at_k"].get("5"))
    checks = {k: {"predicted": p, "se": s, "measured": m,
                  "off_by_se": round(abs(m - p) / max(s, 1e-3), 2)}
              for k, (p, s, m) in measured.items() if m is not None}
    weight = getattr(gallery.load_model(new), "weight", None) if path == "fused" else None
    return {"bridge": bridge.name, "path": path, "checks": checks,  # type: ignore[attr-defined]
            "plan_weight": row.get("weight"), "weight": weight,
            "within_2_se": all(c["off_by_se"] <= 2 for c in checks.values())}


def blend_of(gallery: GalleryCore, model, weight: float | None):
    """`model` (a head fitted with albums) blended with the active model's queries, at its
    fit's weight unless `weight` says otherwise; None when its fit measured no blend."""
    fit = ((getattr(model, "meta", None) and model.meta.metrics) or {}).get("gallery_fit") or {}
    chosen = (fit.get("query_blend") or {}).get("chosen")
    picked = weight if weight is not None else chosen
    if picked is None:
        return None
    w = float(picked)
    if not 0.0 < w < 1.0:
        raise GalleryError(f"--weight {w}: the old model's weight must be between 0 and 1")
    return gallery.load_model(f"{BLEND_PREFIX}{gallery.active_model}+{model.name}@{w:.2f}")


def plan_row(bridge, path: str) -> dict | None:
    plan = (bridge.meta.metrics.get("bridge") or {}).get("plan") or []
    return next((r for r in plan if r["path"] == path), None)


def bridge_upgrade(gallery: GalleryCore, bridge, mode: str | None, weight: float | None,
                   force: bool, dry_run: bool, result, should_stop=None, on_progress=None):
    """Take `bridge`'s native or fused path (its queries path is a plain upgrade to it):
    the stored vectors move by its gallery map (no photo decoded; the sample's real new
    vectors kept), then one switch. `result` is the UpgradeResult to fill."""
    from search.ops.transform import transform_gallery

    spec = bridge.meta.transform
    if spec.get("input_space") != gallery.space:
        raise GalleryError(f"{bridge.name} bridges space {spec.get('input_space')!r}; this gallery "
                           f"serves {gallery.space!r}: fit a new bridge (graceful train "
                           f"--from-gallery --backbone {bridge.meta.backbone} --out NAME)")
    fit = bridge.meta.metrics.get("bridge") or {}
    path = {"native": "transform", "fused": "fused"}[mode or "fused"]
    if mode == "fused":
        weight = float(weight if weight is not None else fit.get("weight", 0.5))
        if not 0.0 < weight < 1.0:
            raise GalleryError(f"--weight {weight}: the old space's weight must be between 0 and 1")
        model = gallery.load_model(fused_name(gallery.require_active_model(), bridge.name, weight))
        transform = model.gallery_transform()  # type: ignore[attr-defined]
    else:
        model = gallery.load_model(spec["target_model"])
        transform = bridge.gallery_transform()
    row = plan_row(bridge, path) or {}
    result.model, result.mode = model.name, mode
    result.photos_embedded = fit.get("photos_embedded", 0)
    result.recommended = fit.get("recommended")
    result.warnings = list(row.get("flags", []))
    if row.get("verdict") == "worse" and not force:
        raise GalleryError(f"{bridge.name}'s plan measured the {path} path worse on this gallery "
                           f"({fit.get('recommendation', '')}); --force takes it anyway")
    result.forced = bool(force and row.get("verdict") == "worse")
    if dry_run:
        stored = gallery.catalog.vectors.count_served(gallery.require_space())
        result.notes.append(f"dry run: would move {stored} stored vectors into {model.space} "
                            f"({mode} mode); nothing changed")
        return result
    state, switched = transform_gallery(gallery, model, transform, should_stop=should_stop,
                                        on_progress=on_progress)
    result.vectors_transformed, result.transform = state.done, True
    if not switched:
        result.notes.append(f"interrupted after moving {state.done} of {state.total} vectors: "
                            f"search still uses {result.previous}; run the same command again "
                            f"to continue (vectors already moved are kept)")
        return result
    result.changed, result.space = True, gallery.space
    how = (f"both generations searched together ({weight:.2f} old, {1 - weight:.2f} "
           f"{model.new.name})"  # type: ignore[attr-defined]
           if mode == "fused" and weight is not None else f"{model.name}'s own space")
    result.notes.append(
        f"moved {state.done} stored vectors in {duration_text(state.seconds)} by {bridge.name}'s "
        f"gallery map ({result.photos_embedded} photos embedded by {bridge.meta.backbone} when it "
        f"was fitted); now serving {how}; the {result.previous} vectors stay (rollback is "
        f"instant); graceful backfill --order uncertainty replaces mapped vectors with real "
        f"embeddings, the most uncertain first")
    return result


def switch_native(gallery: GalleryCore, model, result) -> None:
    """`model`'s own space already holds every photo (a finished backfill or re-embed): one
    transaction makes it the active model, serving natively."""
    t0 = time.perf_counter()
    gallery.activate(model, "upgrade", space=model.space)
    result.switch_ms = round((time.perf_counter() - t0) * 1000, 3)
    result.changed, result.space, result.mode = True, gallery.space, "native"
    result.notes.append(f"{model.name}'s space {model.space} holds every photo: now serving it "
                        f"natively (no vector recomputed)")


__all__ = ["MODES", "PATH_MODE", "serving", "mode_of", "is_bridge", "find_bridge",
           "complete_space", "no_bridge_message", "bridge_upgrade", "switch_native", "parse_fused",
           "predicted_path", "plan_check", "blend_of"]
