"""The pre-flight check of an upgrade: would this model's queries find the right photos among
the vectors the gallery already stores?

A sample of stored photos is embedded by the candidate model and placed among a reference set
(a uniform sample of the gallery's stored vectors, or all of them). Every signal is a fraction
of that set, so the verdict does not drift with gallery size:
  - own rank: where a photo's own stored vector ranks for its new query (0 = first);
  - agreement: overlap of the new query's nearest neighbours with the old query's, chance-
    corrected (0 = what an incompatible model scores);
  - with albums: old/old vs new/old top-1 and mAP over the reference set, and flip rates.
The same signals measure the held-out slice of a gallery-fitted model (`search.fit`).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from models import metrics
from models.evaluation.judge import PLAN, gate
from models.evaluation.judge import judge as judge_figures
from models.imageio import BadImage, decode

from search.core import GalleryCore

if TYPE_CHECKING:
    from models.embedder import Embedder

PREFLIGHT_SAMPLE = 64
PREFLIGHT_TOP = 10
REFERENCE_SIZE = 4000
# Label-free compatibility gate: is the model in the gallery's space at all? A typical photo's
# own stored vector must rank within the top OWN_RANK_MAX of the gallery for its new query, and
# the new query's neighbourhood must agree with the old one's well beyond chance. Incompatible
# models score ~0.5 and ~0; compatible ones < 0.011 and > 0.29 on Caltech halves, and 0.13 and
# 0.62 on a gallery of four albums (docs/BENCHMARKS.md, section 8). The limits sit far from
# both: a model aligned to albums rather than to single photos ranks a photo's own vector
# anywhere within its album, which in a gallery of few albums is a large share of it.
# Whether search gets *better* is for albums to say: compatible models trained on another
# collection pass this gate and can still make search worse.
OWN_RANK_MAX = PLAN.own_rank_max  # the one judge's gate (models/evaluation/judge.py)
AGREEMENT_MIN = PLAN.agreement_min
# With albums: enough labelled queries to judge, and how much worse counts as worse (at least
# this much, and at least one standard error of the paired difference).
MIN_ALBUM_QUERIES = 16
# A fit's measurement stands while the gallery's photo count stays within this share of it.
CHANGED_SHARE = 0.10
MIN_TIMED = 8  # photos embedded before their time is a speed (one is mostly warm-up)
SEED = 20261126  # not the backfill's seed: the two must not pick the same photos


@dataclass
class Preflight:
    sample: int
    self_recall: float  # share of sampled photos whose own stored vector is in the top `top`
    top: int
    mean_cosine: float  # mean similarity between new embedding and stored vector
    threshold: float  # the own-rank limit (fraction of the gallery)
    passed: bool
    seconds: float
    own_rank: float = 0.0  # median fraction of the gallery ranked above a photo's own vector
    own_in_top_1pct: float = 0.0
    agreement: float = 0.0
    reference: int = 0  # gallery vectors the fractions are measured against
    albums: dict | None = None  # old/old vs new/old on album photos, when the gallery has albums
    verdict: str = ""  # better | no worse | worse | incompatible | compatible | empty
    expectation: str = ""  # one sentence: what the user should expect after the switch
    reasons: list[str] = field(default_factory=list)
    images_per_second: float = 0.0  # the candidate's measured embedding speed here
    held_out_only: bool = False  # a gallery-fitted model is checked on photos it never saw
    path: str = "queries"  # what was judged: the queries-only switch or a gallery transform
    measured: dict | None = None  # plan.measure's summary of that path (with albums)
    flags: list[str] = field(default_factory=list)  # what the path loses that averages hide
    reused: str | None = None  # the fit report whose measurement this is (nothing re-embedded)
    decoded: int = 0  # photos decoded and embedded for it (the rest: backbone feature cache)

    def as_dict(self) -> dict:
        return asdict(self)


def in_holdout(sha256: str, rule: dict | None) -> bool:
    """Whether a photo belongs to the held-out slice described by a checkpoint's rule."""
    if not rule:
        return True
    digest = hashlib.sha256((rule.get("salt", "") + sha256).encode()).digest()
    return int.from_bytes(digest[:4], "big") % int(rule["modulus"]) == int(rule["bucket"])


def holdout_rule(model: Embedder) -> dict | None:
    """The held-out rule of the fitted model inside `model`: its own, or for a fused or blended
    query model the bridge's or head's (photos they trained on may not judge them either)."""
    for part in (model, getattr(model, "bridge", None), getattr(model, "new", None)):
        meta = getattr(part, "meta", None)
        if meta is not None and (meta.training or {}).get("holdout"):
            return meta.training["holdout"]
    return None


@dataclass
class Embedded:
    """Stored photos embedded by a candidate model: their ids, in order, and vectors; `fresh`
    of them were decoded and embedded in `seconds` (the rest came from the feature cache)."""
    ids: list[int]
    vectors: np.ndarray
    seconds: float
    fresh: int

    def images_per_second(self) -> float:
        """Measured on the photos embedded here; 0.0 (unknown: the upgrade's estimate then
        takes a nominal speed) when too few were for a rate."""
        timed = self.fresh >= MIN_TIMED and self.seconds > 0
        return round(self.fresh / self.seconds, 2) if timed else 0.0


def embed_stored_photos(gallery: GalleryCore, model: Embedder, ids: list[int], want: int
                        ) -> Embedded:
    """Embed up to `want` of these stored photos (in order) with `model`; unreadable store files
    are passed over (they are not the model's fault). A head on a backbone it did not fine-tune
    takes the backbone's features from the gallery's feature cache where a fit, a bridge or an
    earlier check left them (for the same first photos, in the same order, that it would
    decode), and leaves there the ones it computes."""
    from search.ops.reuse import backbone_cache, head_on_frozen_backbone, projected

    head = head_on_frozen_backbone(model)
    if head is None or head.frozen_backbone is None:
        return _embed_decoded(gallery, model, ids, want)
    backbone = head.frozen_backbone
    ids = ids[: want * 4]
    rows = gallery.catalog.images.images(ids)
    shas = {i: rows[i].sha256 for i in ids if i in rows}
    listed = [i for i in ids if i in shas]
    cache = backbone_cache(gallery, head)
    missing = {listed[n] for n in cache.missing([shas[i] for i in listed])}
    cached = [i for i in listed[:want] if i not in missing]  # the sample the check would take
    fresh = _embed_decoded(gallery, backbone, [i for i in listed if i in missing],
                           want - len(cached))
    if fresh.ids:
        try:
            cache.add([shas[i] for i in fresh.ids], fresh.vectors)
        except OSError:  # a read-only or full cache folder: the check stands without it
            pass
    vectors = np.concatenate([projected(head, cache, [shas[i] for i in cached]),
                              head.project(fresh.vectors) if fresh.ids
                              else np.zeros((0, head.dim), np.float32)])
    return Embedded(cached + fresh.ids, vectors, fresh.seconds, fresh.fresh)


def _embed_decoded(gallery: GalleryCore, model: Embedder, ids: list[int], want: int) -> Embedded:
    """Decode and embed up to `want` of these stored photos; decoding runs ahead in a thread
    while the model embeds."""
    from models.embedder import embed_batches
    from models.pipeline import prefetch_map

    if want <= 0:
        return Embedded([], np.zeros((0, model.dim), np.float32), 0.0, 0)
    rows = gallery.catalog.images.images(ids[: want * 4])

    def load(i: int):
        row = rows.get(int(i))
        if row is None:  # no such photo
            return int(i), None
        try:
            data = gallery.store.read(row.sha256, row.ext)
            return int(i), model.preprocess(decode(data, model.info.image_size).image)
        except (AttributeError, OSError, BadImage):
            return int(i), None

    def readable():
        kept = 0
        for i, tensor in prefetch_map(load, ids[: want * 4], depth=32):
            if tensor is not None:
                yield i, tensor
                kept += 1
                if kept == want:
                    return

    t0 = time.perf_counter()
    kept, chunks = [], []
    for batch_ids, vectors in embed_batches(model, readable()):
        kept += batch_ids
        chunks.append(vectors)
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, model.dim), np.float32)
    return Embedded(kept, vectors, time.perf_counter() - t0, len(kept))


def compat_gate(signals: dict) -> tuple[bool, list[str]]:
    """Label-free: do this model's queries line up with the stored vectors at all? (The one
    judge's first step.)"""
    return gate(signals, PLAN)


INCOMPATIBLE = ("Search would return unrelated photos: this model's queries do not line up with "
                "the vectors this gallery stores.")


def path_expectation(s: dict, verdict: str, where: str = "album photos") -> str:
    """One sentence for a measured path (a `plan.measure` summary with its verdict)."""
    figures = (f"on {s['queries']} {where} top-1 {s['top1'] - s['delta_top1']:.3f} → "
               f"{s['top1']:.3f}, top-5 {s['top5'] - s['delta_top5']:.3f} → {s['top5']:.3f}, mAP "
               f"{s['map'] - s['delta_map']:.3f} → {s['map']:.3f} (±{s['map_se']:.3f}), "
               f"{s['nfr']:.1%} of searches that were right would turn wrong, "
               f"{s['lost_at_5']:.1%} would lose every right photo from their first five")
    lead = {"worse": "Search would get worse", "better": "Search should improve at once",
            "no worse": "Search should stay about as good"}[verdict]
    return f"{lead}: {figures}."


def judge(signals: dict) -> tuple[bool, str, str, list[str]]:
    """(passed, verdict, one-sentence expectation, reasons) from compat signals alone (no path
    measurement): the one judge on label-free figures (its gate), then whether albums can say
    anything."""
    v = judge_figures(signals, PLAN)
    reasons = v.reasons
    if not v.passed:
        return False, "incompatible", INCOMPATIBLE, reasons
    albums = signals.get("albums")
    if albums and albums["queries"] < MIN_ALBUM_QUERIES:
        return True, "compatible", (
            f"Queries will land in the same neighbourhoods as before; only {albums['queries']} "
            f"checked photos are in albums (at least {MIN_ALBUM_QUERIES} are needed to measure "
            f"whether search gets better), so the change in quality is not measured."), reasons
    return True, "compatible", (
        "Queries will land in the same neighbourhoods as before, but whether they get better "
        "cannot be measured without albums: a model trained on other photos can make search "
        "worse here, so put photos into albums to measure it, or fit an upgrade to this "
        "gallery."), reasons


def fit_measurement(model: Embedder) -> dict | None:
    """The measurement a gallery-fitted model carries from its fit (None for other models)."""
    meta = getattr(model, "meta", None)
    fit = (meta.metrics or {}).get("gallery_fit") if meta is not None else None
    return fit if fit and fit.get("measured") else None


def gallery_changed(gallery: GalleryCore, state: dict | None) -> str | None:
    """Why the gallery no longer looks like the one a fit measured, or None when it does: the
    same gallery and space, within 10% of its photos, the same albums."""
    if not state:
        return "the fit recorded no gallery state"
    if state.get("gallery_id") != gallery.catalog.state.gallery_id():
        return "the model was fitted to another gallery"
    space = gallery.space
    if space is None or state.get("space") != space:
        return f"the gallery now searches space {space}, the fit measured {state.get('space')}"
    photos = gallery.catalog.vectors.count_served(space)
    if abs(photos - state.get("photos", 0)) > CHANGED_SHARE * max(state.get("photos", 0), 1):
        return f"the gallery has {photos} photos, {state.get('photos')} when the model was fitted"
    albums = sorted(a["album"] for a in gallery.catalog.images.albums() if a["album"] is not None)
    if albums != state.get("albums"):
        return "the albums changed since the model was fitted"
    return None


def reuse_fit(gallery: GalleryCore, model: Embedder, path: str = "queries") -> Preflight | None:
    """The fit's own measurement of `path`, when the gallery has not changed enough to need a
    new one: one decision, one sample, one rule (nothing is embedded)."""
    fit = fit_measurement(model)
    if fit is None or gallery_changed(gallery, fit.get("gallery_state")):
        return None
    measured, held = fit["measured"], fit["held_out"]
    s = measured["paths"].get(path)
    if s is None:
        return None
    passed, reasons = compat_gate(held)
    verdict = s["verdict"] if passed else "incompatible"
    return Preflight(
        sample=measured["queries"], self_recall=held["own_in_top"], top=held["top"],
        mean_cosine=held["mean_cosine"], threshold=OWN_RANK_MAX,
        passed=passed and verdict != "worse", seconds=0.0, own_rank=held["own_rank"],
        own_in_top_1pct=held["own_in_top_1pct"], agreement=held["agreement"],
        reference=measured["reference"], albums=held.get("albums"), verdict=verdict,
        expectation=(path_expectation(s, verdict, "held-out photos") if passed else INCOMPATIBLE),
        reasons=reasons, held_out_only=True, path=path, measured=s, flags=s["flags"],
        reused=f"the fit of {model.name} (same gallery, unchanged since)")


def preflight(gallery: GalleryCore, model: Embedder, sample: int = PREFLIGHT_SAMPLE,
              top: int = PREFLIGHT_TOP, reference: int = REFERENCE_SIZE, path: str = "queries",
              transform=None) -> Preflight:
    """Measure how `model`'s queries sit among the stored vectors (or, for `path="transform"`,
    among them moved by `transform`). A model fitted to this gallery reuses its fit's
    measurement while the gallery is unchanged; otherwise it is measured again on at least as
    many held-out photos as the fit used. Nothing is written but the feature cache (the
    backbone features it computed for a head model)."""
    reused = reuse_fit(gallery, model, path)
    if reused is not None:
        return reused
    fit = fit_measurement(model)
    if fit is not None:
        sample = max(sample, fit["measured"]["queries"])
    t0 = time.perf_counter()
    space = gallery.require_space()  # (an upgrade checks that the gallery has a model)
    members = gallery.catalog.vectors.space_members(space, exclude_model=model.name)
    if len(members) < 2:
        everything = len(gallery.catalog.vectors.space_members(space)) >= 2
        return Preflight(0, 1.0, top, 1.0, OWN_RANK_MAX, True, 0.0, verdict="empty", expectation=(
            f"Every stored photo is already embedded by {model.name}: searches will look as they "
            f"did when it was last active." if everything else
            "The gallery has too few photos to check; nothing to lose."))
    rng = np.random.default_rng(SEED)
    order = rng.permutation(members)
    rule = holdout_rule(model)
    if rule:  # a gallery-fitted model: only photos it was never trained on may judge it
        shas = {p.id: p.sha256 for p in gallery.catalog.vectors.space_photos(space)}
        candidates = [int(i) for i in order if in_holdout(shas[int(i)], rule)]
        if not candidates:  # photos added after fitting, none held out: check on any
            candidates, rule = order.tolist(), None
    else:
        candidates = order.tolist()
    embedded = embed_stored_photos(gallery, model, candidates, sample)
    kept, new_q = embedded.ids, embedded.vectors
    if not kept:
        return Preflight(0, 0.0, top, 0.0, OWN_RANK_MAX, False, round(time.perf_counter() - t0, 3),
                         verdict="incompatible", expectation="No stored photo could be read.")
    chosen = set(kept)
    others = [int(i) for i in order[: reference + len(kept)] if int(i) not in chosen]
    others = others[: max(0, reference - len(kept))]
    ref_ids = kept + others
    stored = gallery.catalog.vectors.serving_vectors_of(ref_ids, space)
    ref_ids = [i for i in ref_ids if i in stored]
    ref = np.stack([stored[i] for i in ref_ids])
    pos = {i: n for n, i in enumerate(ref_ids)}
    kept_ok = [n for n, i in enumerate(kept) if i in pos]
    new_q, kept = new_q[kept_ok], [kept[n] for n in kept_ok]
    old_q = np.stack([stored[i] for i in kept])
    own_index = np.array([pos[i] for i in kept])
    labels = gallery.catalog.images.album_labels(ref_ids)
    signals = metrics.compat_signals(new_q, old_q, ref, own_index, [labels[i] for i in kept],
                                     [labels[i] for i in ref_ids], top=top)
    passed, verdict, expectation, reasons = judge(signals)
    measured, flags = None, []
    albums = signals.get("albums")
    if passed and albums and albums["queries"] >= MIN_ALBUM_QUERIES:
        from search.ops import plan

        gallery_side = ref if path == "queries" else transform.apply(ref)
        m = plan.measure(old_q, new_q, {path: gallery_side}, ref, own_index,
                         [labels[i] for i in kept], [labels[i] for i in ref_ids])
        measured = m["paths"][path]
        verdict, flags = measured["verdict"], measured["flags"]
        passed = verdict != "worse"
        expectation = path_expectation(measured, verdict)
    return Preflight(
        sample=len(kept), self_recall=signals["own_in_top"], top=top,
        mean_cosine=signals["mean_cosine"], threshold=OWN_RANK_MAX, passed=passed,
        seconds=round(time.perf_counter() - t0, 3), own_rank=signals["own_rank"],
        own_in_top_1pct=signals["own_in_top_1pct"], agreement=signals["agreement"],
        reference=len(ref), albums=signals.get("albums"), verdict=verdict,
        expectation=expectation, reasons=reasons,
        images_per_second=embedded.images_per_second(), decoded=embedded.fresh,
        held_out_only=bool(rule), path=path, measured=measured, flags=flags)


def standing_verdict(gallery: GalleryCore, entry) -> str | None:
    """What is known, without embedding anything, about `entry` (a model or registry entry)
    querying this gallery: its fit's verdict while the gallery is unchanged, else None."""
    fit = fit_measurement(entry)
    if fit is None or gallery_changed(gallery, fit.get("gallery_state")):
        return None
    row = next((r for r in fit.get("plan", []) if r["path"] == "queries"), None)
    if row is None:
        return None
    where = f"{fit['measured']['queries']} held-out photos"
    recommended = fit.get("recommended")
    tail = f"; recommended: {recommended}" if recommended and recommended != "queries" else ""
    if row["verdict"] == "worse":
        return f"no: worse on {where}{tail}"
    flagged = " (loses results)" if row["flags"] else ""
    return f"yes, {row['verdict']}{flagged} on {where}{tail}"
