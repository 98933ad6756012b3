"""Label-free bridges fitted to a gallery (`graceful train --from-gallery --backbone B`, B a
model of another space; `--method bridge`, the default when the gallery has no albums).

The new model runs on a uniform sample of the stored photos, grown by doubling while the gallery
map's out-of-fold fidelity still improves (a learning curve; bounded, `--sample` overrides). Its
real vectors are kept (in B's space: a later transform, fused mode or re-embed reuses them). From
the pairs (stored vector, new vector) of the sample's training photos it learns a gallery map
(stored -> B's space) and a query map (B -> the stored space), each ridge or orthogonal
Procrustes by cross-validated neighbour fidelity. Every path is then measured on the sample's
held-out photos searching the whole gallery (search.ops.bridge_plan), and the bridge is saved
as a checkpoint: B with the query map as its head (so `upgrade NAME` is the queries path) and
the gallery map as its transform (`upgrade NAME --mode native|fused`).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from models.bridge import choose_map
from models.checkpoint import CheckpointMeta, fingerprint, save_checkpoint
from models.features import extract
from models.progress import Progress
from models.transform import LinearMap, fit_linear_map

from search.core import GalleryCore
from search.ops import bridge_plan
from search.ops.compare import earlier_checks
from search.ops.fit import SHARD, FitRequest, _gallery_state, _transform_rate, _validate
from search.ops.fit_sample import (
    CURVE_GAIN,
    CURVE_START,
    HOLDOUT,
    MIN_PHOTOS,
    NOMINAL_IMAGES_PER_SECOND,
    FitError,
    _labelled_albums,
    bridge_sample,
)
from search.ops.preflight import in_holdout


def curve_steps(cap: int, requested: int | None) -> list[int]:
    if requested:
        return [cap]
    steps, n = [], min(cap, CURVE_START)
    while n < cap:
        steps.append(n)
        n *= 2
    return steps + [cap]


def wants_bridge(gallery: GalleryCore, req: FitRequest) -> bool:
    """A label-free bridge is fitted for --method bridge, and for auto when the backbone lives
    in another space than the gallery's and no albums give labels."""
    if req.method == "bridge":
        return True
    if req.method != "auto" or gallery.space is None:
        return False
    entry = gallery.resolve_model(req.backbone)
    if entry.kind not in ("efficientnet", "open_clip") or entry.name == gallery.space:
        return False
    labels = dict(gallery.catalog.images.album_labels(gallery.catalog.vectors.space_members(gallery.space)))
    return len(_labelled_albums(labels, list(labels))) < 2


def _embed(gallery: GalleryCore, backbone, photos: list, req: FitRequest) -> tuple[list[int], np.ndarray, float]:
    """The new model's vectors of these photos (feature cache: a kill keeps finished shards),
    skipping photos whose store file is gone."""
    present = [p for p in photos if gallery.store.path(p.sha256, p.ext).is_file()]
    files = [gallery.store.path(p.sha256, p.ext) for p in present]
    t0 = time.perf_counter()
    feats = extract(backbone, files, gallery.cache_dir, batch_size=16, shard_size=SHARD,
                    progress=False, shas=[p.sha256 for p in present],
                    on_progress=req.on_progress, should_stop=req.should_stop)
    return [p.id for p in present], feats, time.perf_counter() - t0


def _keep_vectors(gallery: GalleryCore, backbone, ids: list[int], feats: np.ndarray) -> None:
    """Store the sample's real new vectors in the new model's space (once)."""
    space = backbone.space
    vectors = gallery.catalog.vectors
    have = set(vectors.serving_vectors_of(ids, space)) if vectors.space_dim(space) else set()
    todo = [n for n, i in enumerate(ids) if i not in have]
    if todo:
        with gallery.catalog.transaction():
            gallery.catalog.vectors.put_vectors([ids[n] for n in todo], feats[todo], backbone.name, space)


def _split(ids: list[int], shas: dict[int, str]) -> tuple[list[int], list[int]]:
    """(train rows, held-out rows) of the sample: held out by the bytes' hash (as every fit)."""
    held = [n for n, i in enumerate(ids) if in_holdout(shas[i], HOLDOUT)]
    if len(held) < 4:  # a tiny sample: every fifth photo instead
        held = list(range(4, len(ids), 5))
    hs = set(held)
    return [n for n in range(len(ids)) if n not in hs], held


def fit_bridge(gallery: GalleryCore, req: FitRequest) -> dict:
    t_start = time.perf_counter()
    dest, backbone = _validate(gallery, req)  # refuses a gallery without a model
    active, space = gallery.require_active_model(), gallery.require_space()
    if backbone.space == space:
        raise FitError(f"{backbone.name} already searches this gallery's space {space}: "
                       f"upgrade to it directly (graceful upgrade {backbone.name})")
    members = gallery.catalog.vectors.space_photos(space)
    if len(members) < MIN_PHOTOS:
        raise FitError(f"this gallery has {len(members)} photo{'s' if len(members) != 1 else ''}; "
                       f"a bridge needs at least "
                       f"{MIN_PHOTOS} (some to learn from, some to check on). For a gallery "
                       f"this small, re-embed it instead: graceful reembed {backbone.name}")
    labels = {m.id: m.album for m in members}
    labelled = len(_labelled_albums(labels, list(labels))) >= 2
    shas = {m.id: m.sha256 for m in members}
    order = [members[i] for i in np.random.default_rng(req.seed).permutation(len(members))]
    cap = bridge_sample(len(members), req.sample)
    curve: list[dict] = []
    seconds = 0.0
    for n in curve_steps(cap, req.sample):
        ids, feats, s = _embed(gallery, backbone, order[:n], req)
        seconds += s
        _keep_vectors(gallery, backbone, ids, feats)
        train, held = _split(ids, shas)
        stored = gallery.catalog.vectors.serving_vectors_of(ids, space)
        old = np.stack([stored[i] for i in ids])
        if len(train) < 10:
            raise FitError(f"too few readable photos to learn a bridge from ({len(train)})")
        cosine = fit_linear_map(old[train], feats[train], seed=req.seed)[0].spec["oof_cosine"]
        curve.append({"photos": len(ids), "asked": n, "oof_cosine": cosine})
        if len(curve) >= 2 and curve[-1]["oof_cosine"] - curve[-2]["oof_cosine"] < CURVE_GAIN:
            break
    if req.on_progress:
        req.on_progress(Progress("fit", backbone.name, 1, 0, stage="mapping"))
    order_rows = train + held
    ids = [ids[n] for n in order_rows]
    feats, old = feats[order_rows], old[order_rows]
    n_train = len(train)
    gmap = choose_map(old[:n_train], feats[:n_train], seed=req.seed)
    qmap = choose_map(feats[:n_train], old[:n_train], side="query", seed=req.seed)

    t0 = time.perf_counter()
    embedded = set(ids)
    rest = [m.id for m in order if m.id not in embedded][: max(0, bridge_plan.REFERENCE_MAX - len(ids))]
    rest_vectors = gallery.catalog.vectors.serving_vectors_of(rest, space)
    rest = [i for i in rest if i in rest_vectors]
    old_rest = np.stack([rest_vectors[i] for i in rest]) if rest else np.zeros((0, old.shape[1]), np.float32)
    t_map = time.perf_counter()
    mapped_rest = gmap.map.apply(old_rest) if rest else np.zeros((0, feats.shape[1]), np.float32)
    t_map = time.perf_counter() - t_map
    ref_ids = ids + rest
    data = bridge_plan.BridgeData(
        np.concatenate([old, old_rest]), feats, n_train, mapped_rest, gmap.oof,
        gmap.map.apply(old[n_train:]), qmap.map.apply(feats[n_train:]),
        [labels[i] for i in ref_ids] if labelled else None)
    measured = bridge_plan.measure(data)
    labelled = measured["labelled"]  # albums that cannot judge anything count as none
    weight = bridge_plan.choose_weight(measured)
    photos = len(members)
    rate = len(ids) / seconds if seconds > 0.5 else NOMINAL_IMAGES_PER_SECOND.get(backbone.name, 30.0)
    moved = photos / _transform_rate(t_map, max(len(rest), 1))
    costs = {"keep": {"photos_embedded": 0, "seconds": 0.0},
             "queries": {"photos_embedded": len(ids), "seconds": 0.0},
             "transform": {"photos_embedded": len(ids), "seconds": round(moved, 1)},
             "fused": {"photos_embedded": len(ids), "seconds": round(moved, 1)},
             "backfill": {"photos_embedded": photos,
                          "seconds": round(max(photos - len(ids), 0) / rate, 1)}}
    commands = {"queries": ["upgrade", req.out],
                "transform": ["upgrade", req.out, "--mode", "native"],
                "fused": ["upgrade", req.out, "--mode", "fused", "--weight", f"{weight:.2f}"],
                "backfill": ["reembed", backbone.name]}
    rows = bridge_plan.plan_rows(measured, weight, costs, commands)
    recommended, why = bridge_plan.recommend(rows, labelled)
    t_eval = time.perf_counter() - t0
    report = {
        "name": req.out, "method": "bridge", "requested_method": req.method,
        "backbone": backbone.name, "new_space": backbone.space, "old_model": active,
        "space": space, "gallery_photos": photos, "labelled": labelled, "vector_only": False,
        "photos_embedded": len(ids),
        "sample": {"train": n_train, "held_out": len(ids) - n_train, "reference": len(ref_ids),
                   "labelled": labelled, "curve": curve,
                   "missing_files": curve[-1]["asked"] - curve[-1]["photos"]},
        "maps": {"gallery": gmap.map.spec, "query": qmap.map.spec},
        "plan": rows, "recommended": recommended, "recommendation": why,
        "next_command": commands.get(recommended), "weight": weight, "measured": measured,
        "albums_unusable": measured.get("albums_unusable"),
        "passed": recommended != "keep", "verdict": "unjudged" if not labelled else
        next((r["verdict"] for r in rows if r["path"] == recommended), "baseline"),
        "expectation": why, "forced": False, "gallery_state": _gallery_state(gallery, space),
        "seconds": {"features": round(seconds, 2), "evaluate": round(t_eval, 2),
                    "total": round(time.perf_counter() - t_start, 2)},
        "images_per_second": round(rate, 2), "created_at": time.time(), "path": None,
        "earlier_predictions": earlier_checks(gallery),
    }
    report["report"] = str(gallery.save_report("fit", req.out, report))
    path = _save(gallery, req, dest, backbone, active, space, gmap.map, qmap.map, ids[:n_train],
                 shas, report)
    report["path"] = str(path)
    report["seconds"]["total"] = round(time.perf_counter() - t_start, 2)
    gallery.save_report("fit", req.out, report, Path(report["report"]))
    return report


def _save(gallery: GalleryCore, req: FitRequest, dest, backbone, active: str, space: str,
          gmap: LinearMap, qmap: LinearMap, train_ids: list[int], shas: dict, report: dict):
    """The checkpoint: backbone B, the query map as its (linear) head into the stored space,
    the gallery map as its transform into B's space."""
    d_in, d_out = qmap.weight.shape
    spec = {"type": "linear", "in_dim": int(d_in), "out_dim": int(d_out)}
    head = {"proj.weight": np.ascontiguousarray(qmap.weight.T, np.float32),
            "proj.bias": np.asarray(qmap.mean_out - qmap.mean_in @ qmap.weight, np.float32)}
    transform = {**gmap.spec, "input_space": space, "output_space": backbone.space,
                 "target_model": backbone.name}
    compact = {k: report[k] for k in ("method", "backbone", "old_model", "space", "gallery_photos",
                                      "sample", "labelled", "plan", "recommended",
                                      "recommendation", "next_command", "weight", "gallery_state",
                                      "photos_embedded", "seconds", "vector_only")}
    meta = CheckpointMeta(
        name=req.out, backbone=backbone.name, dim=int(d_out), space=space,
        compatible_with=sorted({space, *gallery.load_model(active).info.compatible_with}),
        method="bridge", head=spec, old_model=active,
        data_fingerprint=fingerprint(sorted(shas[i] for i in train_ids)),
        metrics={"bridge": compact, "query_map": qmap.spec},
        training={"from_gallery": str(gallery.home), "images": len(train_ids),
                  "command": " ".join(sys.argv), "holdout": HOLDOUT},
        transform=transform)
    return save_checkpoint(dest, meta, head, half=False, aux=gmap.tensors())


def bridge_report(model) -> dict | None:
    """What a bridge checkpoint's fit measured (None for other models)."""
    meta = getattr(model, "meta", None)
    return (meta.metrics or {}).get("bridge") if meta is not None and meta.method == "bridge" else None
