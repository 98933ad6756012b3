"""Upgrade and roll back the query model of a gallery, without recomputing a single vector.

`upgrade` switches the active model when it outputs into the gallery's space, after a pre-flight
check on a sample of the gallery; it is one transaction and its cost does not grow with the
gallery. A model of another space takes the classic path instead (`search.reembed`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, asdict, field

import numpy as np

from models.embedder import Embedder

from .gallery import Gallery, GalleryError
from .images import BadImage, decode

PREFLIGHT_SAMPLE = 24
PREFLIGHT_TOP = 10
# Share of sampled photos that, embedded by the new model, must find their own old vector in the
# top PREFLIGHT_TOP. The shipped lite2->lite0 model scores ~0.9 on Caltech-101; an
# incompatible model of the same dimension scores ~0.
PREFLIGHT_MIN_RECALL = 0.5


@dataclass
class Preflight:
    sample: int
    self_recall: float  # share of sampled images whose own stored vector is in the top results
    top: int
    mean_cosine: float  # mean similarity between new embedding and stored vector
    threshold: float
    passed: bool
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


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

    def as_dict(self) -> dict:
        d = asdict(self)
        d["preflight"] = self.preflight.as_dict() if self.preflight else None
        return d


def preflight(gallery: Gallery, model: Embedder, sample: int = PREFLIGHT_SAMPLE,
              top: int = PREFLIGHT_TOP, seed: int = 0) -> Preflight:
    """Embed a sample of gallery photos with `model`; each must find its own stored vector."""
    t0 = time.perf_counter()
    space = gallery.space
    idx = gallery.index(space)
    ids = gallery.catalog.db.execute(
        "SELECT DISTINCT image_id FROM vectors WHERE space = ?", [space]).fetchall()
    ids = np.array([r[0] for r in ids], dtype=np.int64)
    if idx is None or len(ids) == 0:
        return Preflight(0, 1.0, top, 1.0, PREFLIGHT_MIN_RECALL, True, 0.0)
    rng = np.random.default_rng(seed)
    images, kept = [], []
    # Walk a random order until `sample` photos decoded; unreadable store files are passed over
    # (they are not the model's fault) without shrinking the sample.
    order = rng.permutation(ids)
    for start in range(0, min(len(order), sample * 10), sample):
        chunk = order[start:start + sample].tolist()
        rows = gallery.catalog.images(chunk)
        for i in chunk:
            row = rows.get(int(i))
            try:
                data = gallery.store.read(row.sha256, row.ext)
                images.append(decode(data, model.info.image_size).image)
                kept.append(int(i))
            except (OSError, BadImage, AttributeError):
                continue
            if len(kept) == sample:
                break
        if len(kept) == sample:
            break
    vectors = model.embed_images(images)
    _, found = idx.search(vectors, top)
    recall = float(np.mean([k in f for k, f in zip(kept, found)])) if kept else 0.0
    stored = np.stack([idx.index.reconstruct(int(k)) for k in kept]) if kept else vectors
    cosine = float(np.mean((vectors * stored).sum(1))) if kept else 0.0
    return Preflight(len(kept), round(recall, 4), top, round(cosine, 4), PREFLIGHT_MIN_RECALL,
                     recall >= PREFLIGHT_MIN_RECALL, round(time.perf_counter() - t0, 3))


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
    check = preflight(gallery, model, sample)
    result = UpgradeResult(model.name, current, space, False, dry_run, force and not check.passed,
                           check, 0.0)
    if not check.passed and not force:
        raise GalleryError(
            f"pre-flight check failed: only {check.self_recall:.0%} of {check.sample} sampled photos "
            f"embedded by {model.name} found their own {current} vector in the top {check.top} "
            f"(need {check.threshold:.0%}; mean cosine {check.mean_cosine:.3f}). "
            f"The model is not compatible with this gallery; --force overrides."
        )
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


def rollback(gallery: Gallery) -> RollbackResult:
    history = gallery.catalog.get_state("model_history", [])
    if not history:
        raise GalleryError("nothing to roll back to: this gallery has used one model only")
    current = gallery.active_model
    target = history[-1]
    model = gallery.load_model(target)
    t0 = time.perf_counter()
    with gallery.catalog.transaction():
        gallery.activate(model, "rollback")
        # activate() pushed `current` onto the history; a rollback pops it instead.
        gallery.catalog.set_state("model_history", history[:-1])
    ms = (time.perf_counter() - t0) * 1000
    kept = gallery.catalog.db.execute(
        "SELECT count(*) FROM vectors WHERE model = ? AND space = ?", [current, model.space]
    ).fetchone()[0]
    missing = gallery.catalog.db.execute(
        "SELECT count(*) FROM images WHERE id NOT IN (SELECT image_id FROM vectors WHERE space = ?)",
        [model.space],
    ).fetchone()[0]
    return RollbackResult(target, current, model.space, kept, missing, round(ms, 3))
