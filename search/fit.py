"""Fit an upgrade to the gallery itself (`graceful train --from-gallery`).

Compatibility learned on one collection does not transfer to another, so the compatible model is
trained on the gallery's own photos: the old side is the vectors the gallery already stores (never
recomputed), only the new backbone runs, on a sample of stored photos stratified by album. A
held-out slice (photos chosen by a hash of their bytes, never trained on) measures the model with
the pre-flight's signals before anything is registered; a model that would make search worse is
not saved without `force`.
"""
from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from models import metrics, registry
from models.checkpoint import SUFFIX, CheckpointMeta, fingerprint, save_checkpoint
from models.compat_train import NAME_RE
from models.compatible import HeadEmbedder
from models.features import extract
from models.fsutil import atomic_write_bytes
from models.progress import Progress
from models.train import LABELLED_METHODS, TrainConfig, old_classifier_rows, train_head

from .gallery import Gallery, GalleryError
from .preflight import in_holdout, judge

FIT_METHODS = ("auto", "bct", "pct", "adapter", "procrustes")
MIN_PHOTOS = 20  # below this a held-out slice cannot say anything
SAMPLE_FLOOR = 1500  # photos the new backbone runs on, at least (or all, if fewer) ...
SAMPLE_SHARE = 8  # ... else one in this many photos of the gallery ...
SAMPLE_CAP = 5000  # ... up to this many
HELD_OUT_SHARE = 5  # one in five sampled photos measures, the rest train
HELD_OUT_MAX = 600
HOLDOUT = {"rule": "sha256-bucket", "salt": "graceful-holdout-1", "modulus": 5, "bucket": 0}
SHARD = 16  # feature-cache shard size: a kill loses at most this many images' work
# Measured here (2 cores, batch 16, docs/BENCHMARKS.md): for estimates made before a model ran.
NOMINAL_IMAGES_PER_SECOND = {"lite0": 86.0, "lite1": 65.0, "lite2": 36.0}


class FitError(GalleryError):
    """The gallery cannot be fitted as asked; the message says why and what to do."""


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
    progress: bool = False  # tqdm bars on stderr (the CLI)
    on_progress: Callable[[Progress], None] | None = None  # stage "features", then "training"
    should_stop: Callable[[], bool] | None = None
    seed: int = 0


def default_sample(photos: int) -> int:
    """How many stored photos the new backbone runs on by default: all of a small gallery, one
    in eight of a large one, between 1,500 and 5,000 (so fitting stays a fraction of a backfill)."""
    return min(photos, max(SAMPLE_FLOOR, min(SAMPLE_CAP, photos // SAMPLE_SHARE)))


def estimate_seconds(photos: int, images_per_second: float, sample: int | None = None) -> dict:
    """Time to fit an upgrade vs a full backfill, from a measured embedding speed."""
    n = sample or default_sample(photos)
    rate = max(images_per_second, 1e-6)
    return {"photos": photos, "sample": n, "fit_seconds": round(n / rate + 3 + n * 0.005, 1),
            "backfill_seconds": round(photos / rate, 1), "images_per_second": round(rate, 2)}


def stratified(ids: list[int], labels: dict[int, str | None], n: int, rng: np.random.Generator
               ) -> list[int]:
    """n ids with every album represented (two each where possible), the rest proportional."""
    if n >= len(ids):
        return list(ids)
    groups: dict = defaultdict(list)
    for i in rng.permutation(ids).tolist():
        groups[labels.get(i)].append(i)
    first = [i for g in groups.values() for i in g[:2]]
    if len(first) >= n:
        return rng.permutation(first)[:n].tolist()
    # systematic stratified order for the rest: each album's photos spread evenly
    position = {i: (k + 0.5) / len(g) for g in groups.values() for k, i in enumerate(g)}
    rest = sorted((i for g in groups.values() for i in g[2:]), key=position.__getitem__)
    return first + rest[: n - len(first)]


def _labelled_albums(labels: dict[int, str | None], ids: list[int]) -> dict[str, int]:
    counts: dict = defaultdict(int)
    for i in ids:
        if labels.get(i) is not None:
            counts[labels[i]] += 1
    return {a: c for a, c in counts.items() if c >= 2}


def resolve_method(method: str, albums: dict[str, int]) -> str:
    labelled = len(albums) >= 2
    if method == "auto":
        return "pct" if labelled else "adapter"
    if method in LABELLED_METHODS and not labelled:
        found = ", ".join(f"{a} ({c})" for a, c in sorted(albums.items())) or "none"
        raise FitError(
            f"--method {method} learns from albums, and needs at least two albums with two or more "
            f"photos each; this gallery has: {found}. Put photos into albums (graceful albums set, "
            f"or graceful index --album NAME) or use --method adapter (no albums needed).")
    return method


def plan_sample(members: list, labelled: bool, sample: int | None = None, seed: int = 0
                ) -> tuple[list[int], list[int]]:
    """(training ids, held-out ids): the held-out slice is fixed by each photo's bytes (so the
    pre-flight can find it again); both are stratified by album."""
    labels = {m.id: m.album for m in members}
    held_pool = [m.id for m in members if in_holdout(m.sha256, HOLDOUT)]
    train_pool = [m.id for m in members if not in_holdout(m.sha256, HOLDOUT)]
    if labelled:
        albums = _labelled_albums(labels, train_pool)
        train_pool = [i for i in train_pool if labels[i] in albums]
        if len(albums) < 2:
            raise FitError("the albums are too small to learn from once a held-out slice is set "
                           "aside: add photos to them, or use --method adapter")
    total = min(sample or default_sample(len(members)), len(members))
    rng = np.random.default_rng(seed)
    n_held = min(HELD_OUT_MAX, max(8, total // HELD_OUT_SHARE), len(held_pool))
    if total >= len(members) and len(held_pool) <= HELD_OUT_MAX:
        n_held = len(held_pool)  # a small gallery is used whole
    held = stratified(held_pool, labels, n_held, rng)
    train = stratified(train_pool, labels, max(total - n_held, 0), rng)
    if len(train) < 8 or len(held) < 2:
        raise FitError(f"too few photos to learn from ({len(train)}) or to check on ({len(held)}); "
                       "index more photos or pass a larger --sample")
    return train, held


def fit_upgrade(gallery: Gallery, req: FitRequest) -> dict:
    """Train, measure and (unless refused) save a model compatible with this gallery's space.
    Returns the report (also saved in reports/ and in the checkpoint's metadata)."""
    t_start = time.perf_counter()
    if req.method not in FIT_METHODS:
        raise FitError(f"unknown method {req.method!r}; choose from {', '.join(FIT_METHODS)}")
    if not NAME_RE.match(req.out):
        raise FitError(f"model name {req.out!r}: use letters, digits, '_', '.', '-' (max 64)")
    dest = gallery.models_dir / f"{req.out}{SUFFIX}"
    if dest.exists() and not req.replace:
        raise FitError(f"a model called {req.out!r} already exists ({dest}); choose another --out "
                       "or replace it (--replace)")
    taken = {e.name for e in registry.available(gallery.model_dirs)}
    if req.out in taken and not dest.exists():
        raise FitError(f"{req.out!r} is already the name of another model")
    active, space = gallery.active_model, gallery.space
    if active is None:
        raise FitError("the gallery has no photos yet: index some first")
    backbone = gallery.load_model(req.backbone)
    if isinstance(backbone, HeadEmbedder):
        raise FitError("the backbone must be a base model (lite0/1/2 or open_clip), not a trained head")
    if backbone.name == active:
        raise FitError(f"{backbone.name} is already the gallery's model: choose a new backbone")

    members = gallery.catalog.space_photos(space)
    if len(members) < MIN_PHOTOS:
        raise FitError(
            f"this gallery has {len(members)} photo{'s' if len(members) != 1 else ''}; fitting an "
            f"upgrade to it needs at least {MIN_PHOTOS} (some to learn from, some to check on). "
            f"For a gallery this small, re-embed it instead: graceful reembed {req.backbone}")
    labels = {m.id: m.album for m in members}
    method = resolve_method(req.method, _labelled_albums(labels, list(labels)))
    labelled = method in LABELLED_METHODS
    train, held = plan_sample(members, labelled, req.sample, req.seed)

    by_id = {m.id: m for m in members}
    sample_ids = train + held
    files = [gallery.store.path(by_id[i].sha256, by_id[i].ext) for i in sample_ids]
    present = [n for n, f in enumerate(files) if f.is_file()]
    missing = len(files) - len(present)
    sample_ids = [sample_ids[n] for n in present]
    files = [files[n] for n in present]
    readable = set(sample_ids)
    train = [i for i in train if i in readable]
    held = [i for i in held if i in readable]

    t0 = time.perf_counter()
    feats = extract(backbone, files, gallery.cache_dir, batch_size=16, shard_size=SHARD,
                    progress=req.progress, shas=[by_id[i].sha256 for i in sample_ids],
                    on_progress=req.on_progress,
                    should_stop=req.should_stop)
    t_features = time.perf_counter() - t0
    stored = gallery.catalog.serving_vectors_of(sample_ids, space)
    old = np.stack([stored[i] for i in sample_ids])
    n_train = len(train)
    f_train = feats[:n_train]
    o_train, o_held = old[:n_train], old[n_train:]

    t0 = time.perf_counter()
    cfg = TrainConfig(method, dim=old.shape[1], loss=req.loss, epochs=req.epochs, seed=req.seed)
    classes: list[str] = []
    y = None
    w_old = None
    if labelled:
        classes = sorted({labels[i] for i in train})
        index = {c: k for k, c in enumerate(classes)}
        y = np.array([index[labels[i]] for i in train])
        # the old classifier: one prototype per album, the mean of its stored old vectors
        w_old = old_classifier_rows(o_train, y, len(classes))
    if req.on_progress:
        req.on_progress(Progress("fit", backbone.name, 1, 0, stage="training"))
    trained = train_head(cfg, f_train, y, len(classes), old_emb=o_train, old_classifier=w_old,
                         progress=req.progress)
    t_train = time.perf_counter() - t0

    t0 = time.perf_counter()
    new_all = trained.embed(feats)
    new_held = new_all[n_train:]
    own_index = np.arange(n_train, len(sample_ids))
    ref_labels = [labels[i] for i in sample_ids]
    q_labels = [labels[i] for i in held]
    signals = metrics.compat_signals(new_held, o_held, old, own_index, q_labels, ref_labels,
                                     new_reference=new_all)
    passed, verdict, expectation, reasons = judge(signals)
    t_eval = time.perf_counter() - t0

    report = {
        "name": req.out, "method": method, "requested_method": req.method, "backbone": backbone.name,
        "old_model": active, "space": space, "gallery_photos": len(members),
        "sample": {"train": len(train), "held_out": len(held), "missing_files": missing,
                   "albums": len(classes), "labelled": labelled},
        "held_out": signals, "passed": passed, "verdict": verdict, "expectation": expectation,
        "reasons": reasons, "forced": bool(req.force and not passed),
        "seconds": {"features": round(t_features, 2), "train": round(t_train, 2),
                    "evaluate": round(t_eval, 2), "total": round(time.perf_counter() - t_start, 2)},
        "images_per_second": round(len(sample_ids) / t_features, 2) if t_features > 0.5 else None,
        "created_at": time.time(), "path": None,
    }
    report["report"] = str(_save_report(gallery, report))
    if not passed and not req.force:
        raise FitRefused(
            f"{req.out} was not saved: measured on {len(held)} held-out photos of this gallery it "
            f"would not make search better. {expectation}"
            + "".join(f"\n  {r}" for r in reasons)
            + f"\nReport: {report['report']}. --force saves it anyway.", report)

    meta = CheckpointMeta(
        name=req.out, backbone=backbone.name, dim=old.shape[1], space=space,
        compatible_with=sorted({space, *gallery.load_model(active).info.compatible_with}),
        method=method, head=trained.head_spec, old_model=active,
        data_fingerprint=fingerprint(sorted(by_id[i].sha256 for i in train)),
        metrics={"train_seconds": round(t_train, 2), "gallery_fit": _compact(report),
                 "eval": _eval_cell(signals, len(held))},
        classes=classes if trained.classifier is not None else [],
        training={"config": cfg.as_dict(), "from_gallery": str(gallery.home), "images": len(train),
                  "classes": len(classes), "command": " ".join(sys.argv), "holdout": HOLDOUT},
    )
    aux = {"classifier": trained.classifier} if trained.classifier is not None else {}
    path = save_checkpoint(dest, meta, trained.head, aux=aux)
    report["path"] = str(path)
    report["seconds"]["total"] = round(time.perf_counter() - t_start, 2)
    _save_report(gallery, report, Path(report["report"]))
    return report


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
                                   "seconds")}


def _save_report(gallery: Gallery, report: dict, path: Path | None = None) -> Path:
    path = path or gallery.reports_dir / f"fit-{time.strftime('%Y%m%d-%H%M%S')}-{report['name']}.json"
    atomic_write_bytes(path, json.dumps(report, indent=1, default=str).encode())
    return path


def latest_fit_report(gallery: Gallery) -> dict | None:
    reports = sorted(gallery.reports_dir.glob("fit-*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(reports[-1].read_text()) if reports else None
