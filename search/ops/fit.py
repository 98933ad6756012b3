"""Fit an upgrade to the gallery itself (`graceful train --from-gallery`).

Compatibility learned on one collection does not transfer to another, so the compatible model is
trained on the gallery's own photos: the old side is the vectors the gallery already stores (never
recomputed), only the new backbone runs, on a sample of stored photos stratified by album. A
held-out slice (photos chosen by a hash of their bytes, never trained on) measures the model with
the pre-flight's signals before anything is registered; a model that would make search worse is
not saved without `force`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from models import metrics, training
from models.features import extract
from models.heads import build_head
from models.progress import Progress
from models.train import LABELLED_METHODS, TrainConfig
from models.training import TrainingSet

from search.core import GalleryCore
from search.ops import fit_blend, plan
from search.ops import fit_sample as fs
from search.ops.fit_sample import FitError, _Sample, plan_sample
from search.ops.preflight import judge

BLENDS = (0.0, 0.3, 0.5, 0.7, 0.85)  # shares of the stored vector a vector-only head may keep
# Relational distillation in fits on a new backbone (models.train.TrainConfig.rel_weight); a
# vector-only head keeps the old neighbourhoods by its blend instead.
REL_WEIGHT = 1.0
# A vector-only blend must keep this share of each photo's old first results on the training
# slice: on Caltech halves with albums four classes wide it picks 0.7, with class albums 0.5,
# and both keep top-1 by class (docs/BENCHMARKS.md section 13).
BLEND_RETENTION = 0.7
SHARD = 16  # feature-cache shard size: a kill loses at most this many images' work


class FitRefused(FitError):
    """The fitted model would make search worse on the held-out slice; `report` says how."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


@dataclass
class FitRequest:
    backbone: str
    out: str
    method: str = "auto"
    sample: int | None = None  # photos the new backbone runs on (default: default_sample)
    loss: str = "ce"
    epochs: int = 30
    force: bool = False  # save (and later upgrade to) a model measured worse
    replace: bool = False  # overwrite a model of the same name
    on_progress: Callable[[Progress], None] | None = None  # stage "features", then "training"
    should_stop: Callable[[], bool] | None = None
    seed: int = 0


def _validate(gallery: GalleryCore, req: FitRequest):
    """(the new model's file, its backbone): the training core's checks (models.training), as
    a FitError."""
    if req.method not in fs.FIT_METHODS:
        raise FitError(f"unknown method {req.method!r}; choose from {', '.join(fs.FIT_METHODS)}")

    def load_backbone():  # after the name checks, as before the training core: a rerun's hint
        if gallery.active_model is None:  # names the flag that gets past the name
            raise training.TrainingError("the gallery has no photos yet: index some first")
        return gallery.load_model(req.backbone)

    try:
        return training.validate(req.out, gallery.models_dir,
                                 [e.name for e in gallery.model_entries()], replace=req.replace,
                                 replace_option="--replace", load_backbone=load_backbone)
    except training.TrainingError as e:
        raise FitError(str(e)) from None


def _members(gallery: GalleryCore, space: str, backbone, vector_only: bool) -> list:
    """The photos a fit may use: every photo of the space, or for a vector-only fit the photos
    whose serving vector the backbone itself embedded (those vectors are its features)."""
    members = gallery.catalog.vectors.space_photos(space)
    if vector_only:
        origins = gallery.catalog.vectors.serving_origins(space, [m.id for m in members])
        members = [m for m in members if origins.get(m.id) == (backbone.name, None)]
    return members


def _collect(gallery: GalleryCore, req: FitRequest, backbone, space: str, members: list,
             labelled: bool, vector_only: bool) -> _Sample:
    by_id = {m.id: m for m in members}
    if vector_only:  # no photo is decoded: the features are the vectors the gallery stores
        train, held = plan_sample(members, labelled, req.sample, req.seed, fs.VECTOR_HELD_OUT_MAX)
        ids = train + held
        stored = gallery.catalog.vectors.serving_vectors_of(ids, space)
        old = np.stack([stored[i] for i in ids])
        if req.on_progress:
            req.on_progress(Progress("features", backbone.name, len(ids), len(ids), stage="features"))
        return _Sample(train, held, old.copy(), old, 0, 0.0, 0)
    train, held = plan_sample(members, labelled, req.sample, req.seed)
    ids = train + held
    files = [gallery.store.path(by_id[i].sha256, by_id[i].ext) for i in ids]
    present = [n for n, f in enumerate(files) if f.is_file()]
    missing = len(files) - len(present)
    readable = {ids[n] for n in present}
    train = [i for i in train if i in readable]
    held = [i for i in held if i in readable]
    ids = train + held
    files = [gallery.store.path(by_id[i].sha256, by_id[i].ext) for i in ids]
    t0 = time.perf_counter()
    feats = extract(backbone, files, gallery.cache_dir, batch_size=16, shard_size=SHARD, progress=False,
                    shas=[by_id[i].sha256 for i in ids],
                    on_progress=req.on_progress, should_stop=req.should_stop)
    seconds = time.perf_counter() - t0
    stored = gallery.catalog.vectors.serving_vectors_of(ids, space)
    old = np.stack([stored[i] for i in ids])
    return _Sample(train, held, feats, old, missing, seconds, len(ids))


def _training_set(sample: _Sample, labels: dict, shas: dict, labelled: bool) -> TrainingSet:
    """The sample's training rows as the training core takes them: new-backbone features, the
    stored vectors as the old side, albums as classes (labelled methods; the old classifier is
    one prototype per album, the mean of its stored vectors)."""
    n_train = len(sample.train)
    classes = sorted({labels[i] for i in sample.train}) if labelled else []
    index = {c: k for k, c in enumerate(classes)}
    y = np.array([index[labels[i]] for i in sample.train]) if labelled else None
    return TrainingSet(sample.feats[:n_train], sample.old[:n_train], y, classes,
                       [shas[i] for i in sample.train])


def _train(req: FitRequest, method: str, sample: _Sample, labels: dict, shas: dict,
           vector_only: bool):
    """The head, trained on the training rows by the training core. A vector-only head keeps
    a share of the stored vector itself (a blend), chosen on a slice of the training photos so
    that searches that were right keep their results; the held-out slice is never looked at."""
    labelled = method in LABELLED_METHODS
    data = _training_set(sample, labels, shas, labelled)
    cfg = TrainConfig(method, dim=sample.old.shape[1], loss=req.loss, epochs=req.epochs,
                      seed=req.seed,
                      rel_weight=REL_WEIGHT if labelled and not vector_only else 0.0)
    if req.on_progress:
        req.on_progress(Progress("fit", req.backbone, 1, 0, stage="training"))
    if not (vector_only and labelled):
        return training.train(cfg, data), data, cfg, None
    # vector-only: learn on most training photos, choose the blend on the rest
    n_train = len(data)
    inner = np.random.default_rng(req.seed).permutation(n_train)
    n_val = max(2, n_train // 5)
    fit_rows, val_rows = np.sort(inner[n_val:]), np.sort(inner[:n_val])
    trained = training.train(cfg, data.rows(fit_rows))
    val_labels = [labels[sample.train[i]] for i in val_rows]
    alpha, choice = choose_blend(trained, data.old[val_rows], val_labels)
    spec = {**trained.head_spec, "type": "blend", "alpha": alpha}
    head = build_head(spec)
    head.load_state_dict(trained.head.state_dict())
    head.eval()
    trained.head, trained.head_spec = head, spec
    return trained, data, cfg, choice


def choose_blend(trained, vectors: np.ndarray, labels: list) -> tuple[float, dict]:
    """The blend (share of the stored vector kept) for a vector-only head: of those whose
    searches among these photos lose at most half of MAX_LOST_AT_5, flip at most MAX_NFR and
    keep at least BLEND_RETENTION of each photo's old first results (label-free: what albums
    coarser than the searches cannot see), the one with the best mAP; else the most
    conservative."""
    import torch

    from search.ops.plan import MAX_LOST_AT_5, MAX_NFR

    with torch.no_grad():
        learned = torch.nn.functional.normalize(
            trained.head(torch.as_tensor(vectors, dtype=torch.float32)), dim=-1).numpy()
    own = np.arange(len(vectors))
    excluded = metrics.exclusion_mask(len(vectors), len(vectors), own)
    base = metrics.search(vectors, vectors, excluded, labels, labels)
    tried = []
    for alpha in BLENDS:
        moved = alpha * vectors + (1 - alpha) * learned
        moved /= np.linalg.norm(moved, axis=1, keepdims=True)
        s = metrics.score(vectors, moved, vectors, moved, labels, labels, excluded,
                          old=base).as_dict()
        tried.append({"alpha": alpha, "map": s["map"], "lost_at_5": s["lost_at_5"], "nfr": s["nfr"],
                      "retention": s["retention"]})
    safe = [t for t in tried if t["lost_at_5"] <= MAX_LOST_AT_5 / 2 and t["nfr"] <= MAX_NFR
            and t["retention"] >= BLEND_RETENTION]
    best = max(safe, key=lambda t: t["map"]) if safe else max(tried, key=lambda t: t["alpha"])
    return best["alpha"], {"chosen": best["alpha"], "tried": tried, "photos": len(vectors)}


def fit_upgrade(gallery: GalleryCore, req: FitRequest) -> dict:
    """Train, measure and (unless refused) save a model compatible with this gallery's space,
    with the plan of every path it can take. Returns the report (also saved in reports/ and in
    the checkpoint's metadata)."""
    t_start = time.perf_counter()
    dest, backbone = _validate(gallery, req)
    active, space = gallery.active_model, gallery.space
    assert active is not None and space is not None  # _validate: the gallery has a model
    # the stored vectors are this backbone's own features: learn from them, decode nothing
    vector_only = backbone.name == space
    if backbone.name == active and not vector_only:
        raise FitError(f"{backbone.name} is already the gallery's model: choose a new backbone")
    members = _members(gallery, space, backbone, vector_only)
    if len(members) < fs.MIN_PHOTOS:
        raise FitError(
            f"this gallery has {len(members)} photo{'s' if len(members) != 1 else ''}"
            + (f" embedded by {backbone.name}" if vector_only else "")
            + f"; fitting an upgrade to it needs at least {fs.MIN_PHOTOS} (some to learn from, some "
            f"to check on). For a gallery this small, re-embed it instead: graceful reembed "
            f"{req.backbone}")
    labels = {m.id: m.album for m in members}
    albums = fs._labelled_albums(labels, list(labels))
    if vector_only and len(albums) < 2:
        found = ", ".join(f"{a} ({c})" for a, c in sorted(albums.items())) or "none"
        raise FitError(
            f"a head on {backbone.name}, the model that computed this gallery's vectors, can only "
            f"learn from albums, and needs at least two albums with two or more photos each; "
            f"this gallery has: {found}. Put photos into albums (graceful albums set, or "
            f"graceful index --album NAME), or fit a new backbone (--backbone lite2).")
    method = fs.resolve_method(req.method, albums)
    if vector_only and method not in LABELLED_METHODS:
        raise FitError(f"--method {method} maps another backbone onto the stored vectors; on "
                       f"{backbone.name} itself only album methods apply (pct, bct)")
    labelled = method in LABELLED_METHODS
    sample = _collect(gallery, req, backbone, space, members, labelled, vector_only)
    n_train = len(sample.train)

    t0 = time.perf_counter()
    shas = {m.id: m.sha256 for m in members}
    trained, data, cfg, blend = _train(req, method, sample, labels, shas, vector_only)
    t_train = time.perf_counter() - t0

    t0 = time.perf_counter()
    new_all = trained.embed(sample.feats)
    transform, moved, t_map = _gallery_transform(trained, sample, new_all, vector_only,
                                                   backbone, space)
    new_held, o_held = new_all[n_train:], sample.old[n_train:]
    own_index = np.arange(n_train, n_train + len(sample.held))
    ref_labels = [labels[i] for i in sample.train + sample.held]
    q_labels = [labels[i] for i in sample.held]
    signals = metrics.compat_signals(new_held, o_held, sample.old, own_index, q_labels, ref_labels,
                                     new_reference=new_all)
    gate_passed, _, _, reasons = judge(signals)
    measured = qblend = None
    if labelled:  # every path: held-out photos searching every sampled photo, as each path serves it
        refs: dict = {"queries": sample.old, "transform": moved, "backfill": new_all}
        if not vector_only:  # the head's query and the old query together (search.ops.fit_blend)
            w, qblend = fit_blend.honest_weight(
                lambda rows: _train(req, method, sample.rows(rows), labels, shas, False)[0].embed,
                sample.feats[:n_train], sample.old[:n_train], [labels[i] for i in sample.train])
            refs["blend"] = (fit_blend.blend(o_held, new_held, w), sample.old)
        measured = plan.measure(o_held, new_held, refs, sample.old, own_index, q_labels, ref_labels)
    t_eval = time.perf_counter() - t0

    photos = gallery.catalog.images.count_images()
    rate = (sample.embedded / sample.seconds if sample.seconds > 0.5
            else fs.NOMINAL_IMAGES_PER_SECOND.get(backbone.name, 30.0))
    seconds = {"queries": 0.0,
               "transform": photos / _transform_rate(t_map, len(sample.train) + len(sample.held)),
               "backfill": photos / rate}
    rows = plan.plan_rows(measured, {**seconds, "blend": 0.0}, {"queries": 0, "blend": 0,
                          "transform": 0, "backfill": photos}) if measured else []
    recommended, why = plan.recommend(rows, measured["old"]) if rows and measured else (None, "")
    passed, verdict, expectation = _fit_verdict(gate_passed, rows, recommended, why, signals)
    report = {
        "name": req.out, "method": method, "requested_method": req.method, "backbone": backbone.name,
        "old_model": active, "space": space, "gallery_photos": len(members),
        "vector_only": vector_only, "photos_embedded": sample.embedded,
        "sample": {"train": n_train, "held_out": len(sample.held), "missing_files": sample.missing,
                   "albums": len(data.classes), "labelled": labelled},
        "held_out": signals, "plan": rows, "recommended": recommended, "recommendation": why,
        "measured": measured, "transform": transform.spec, "blend": blend, "query_blend": qblend,
        "next_command": plan.next_command(req.out, recommended),
        "passed": passed, "verdict": verdict, "expectation": expectation,
        "reasons": reasons, "forced": bool(req.force and not passed),
        "gallery_state": _gallery_state(gallery, space),
        "seconds": {"features": round(sample.seconds, 2), "train": round(t_train, 2),
                    "evaluate": round(t_eval, 2), "total": round(time.perf_counter() - t_start, 2)},
        "images_per_second": round(rate, 2) if sample.embedded else None,
        "created_at": time.time(), "path": None,
    }
    report["report"] = str(gallery.save_report("fit", report["name"], report))
    if not passed and not req.force:
        raise FitRefused(
            f"{req.out} was not saved: measured on {len(sample.held)} held-out photos of this "
            f"gallery it would not make search better. {expectation}"
            + "".join(f"\n  {r}" for r in reasons)
            + f"\nReport: {report['report']}. --force saves it anyway.", report)

    target = training.Target.compatible(req.out, dest, backbone.name, active, space,
                                        gallery.load_model(active).info.compatible_with)
    path, _ = training.save(
        target, trained, cfg, data, source={"from_gallery": str(gallery.home)},
        details={"holdout": fs.HOLDOUT}, transform=transform.spec, aux=transform.tensors,
        metrics={"train_seconds": round(t_train, 2), "gallery_fit": _compact(report),
                 "eval": _eval_cell(signals, len(sample.held))})
    report["path"] = str(path)
    report["seconds"]["total"] = round(time.perf_counter() - t_start, 2)
    gallery.save_report("fit", report["name"], report, Path(report["report"]))
    return report


def _gallery_transform(trained, sample: _Sample, new_all: np.ndarray, vector_only: bool,
                       backbone, space: str):
    """(the transform's spec and tensors, the sample's stored vectors moved by it, seconds the
    mapping took): for a head on the stored vectors' own backbone the head itself (exact); else
    a map learned from the pairs, its training rows predicted out of fold (by maps that never
    saw them), so the measurement is honest."""
    from models.transform import fit_linear_map

    n_train = len(sample.train)
    if vector_only:
        spec = {"kind": "head", "exact": True, "input_space": space, "input_models": [backbone.name]}
        return _Transform(spec, {}), new_all, 0.0
    lmap, oof = fit_linear_map(sample.old[:n_train], new_all[:n_train])
    t0 = time.perf_counter()
    moved = np.concatenate([oof, lmap.apply(sample.old[n_train:])])
    lmap.spec["input_space"] = space
    return _Transform(lmap.spec, lmap.tensors()), moved, time.perf_counter() - t0


@dataclass
class _Transform:
    """A gallery transform as the fit saves it: its spec and the tensors it needs."""
    spec: dict
    tensors: dict  # none for the exact head


def _transform_rate(apply_seconds: float, vectors: int) -> float:
    """Vectors a gallery transform moves per second here: reading, mapping and writing in
    batches, bounded by the catalog (plan.NOMINAL_TRANSFORM_PER_SECOND)."""
    mapped = vectors / apply_seconds if apply_seconds > 1e-4 else float("inf")
    return min(mapped, plan.NOMINAL_TRANSFORM_PER_SECOND)


def _fit_verdict(gate_passed: bool, rows: list[dict], recommended: str | None, why: str,
                 signals: dict) -> tuple[bool, str, str]:
    """(saved?, verdict, one sentence). Saved when its queries line up with the stored vectors
    and at least one path is not worse; the verdict is the recommended path's."""
    if not gate_passed or not rows:
        _, verdict, expectation, _ = judge(signals)
        return gate_passed, verdict, expectation
    by_path = {r["path"]: r for r in rows}
    if recommended:
        return True, by_path[recommended]["verdict"], why
    if all(r["verdict"] == "worse" for r in rows):
        return False, "worse", f"Search would get worse on every path. {why}"
    return True, "no worse", why


def _gallery_state(gallery: GalleryCore, space: str) -> dict:
    """What the fit measured: if the gallery still looks like this, its measurement stands."""
    return {"gallery_id": gallery.catalog.state.gallery_id(), "space": space,
            "photos": gallery.catalog.vectors.count_served(space),
            "albums": sorted(a["album"] for a in gallery.catalog.images.albums() if a["album"] is not None)}


def _eval_cell(signals: dict, held: int) -> dict:
    """The compatibility matrix's format: what was measured, old/old vs new/old."""
    albums = signals.get("albums")
    cell = {"data": f"held-out gallery photos ({held})"}
    if albums:
        cell.update({"old/old": albums["old/old"], "new/old": albums["new/old"],
                     "new/new": albums.get("new/new")})
    return cell


def _compact(report: dict) -> dict:
    return {k: report[k] for k in ("method", "backbone", "old_model", "space", "gallery_photos",
                                   "sample", "held_out", "passed", "verdict", "expectation",
                                   "seconds", "vector_only", "photos_embedded", "plan",
                                   "recommended", "recommendation", "gallery_state", "measured",
                                   "query_blend", "next_command")}
