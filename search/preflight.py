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
from models.imageio import BadImage, decode

from .gallery import Gallery

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
OWN_RANK_MAX = 0.30
AGREEMENT_MIN = 0.10
# With albums: enough labelled queries to judge, and how much worse counts as worse (at least
# this much, and at least one standard error of the paired difference).
MIN_ALBUM_QUERIES = 16
WORSE_MAP = 0.01
WORSE_TOP1 = 0.02
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

    def as_dict(self) -> dict:
        return asdict(self)


def in_holdout(sha256: str, rule: dict | None) -> bool:
    """Whether a photo belongs to the held-out slice described by a checkpoint's rule."""
    if not rule:
        return True
    digest = hashlib.sha256((rule.get("salt", "") + sha256).encode()).digest()
    return int.from_bytes(digest[:4], "big") % int(rule["modulus"]) == int(rule["bucket"])


def holdout_rule(model: Embedder) -> dict | None:
    meta = getattr(model, "meta", None)
    return (meta.training or {}).get("holdout") if meta is not None else None


def embed_stored_photos(gallery: Gallery, model: Embedder, ids: list[int], want: int
                        ) -> tuple[list[int], np.ndarray, float]:
    """Embed up to `want` of these stored photos (in order) with `model`; unreadable store files
    are passed over (they are not the model's fault). Decoding runs ahead in a thread while
    the model embeds. Returns (ids, vectors, seconds)."""
    from models.embedder import embed_batches
    from models.pipeline import prefetch_map

    rows = gallery.catalog.images(ids[: want * 4])

    def load(i: int):
        row = rows.get(int(i))
        try:
            data = gallery.store.read(row.sha256, row.ext)
            return int(i), model.preprocess(decode(data, model.info.image_size).image)
        except (AttributeError, OSError, BadImage):  # AttributeError: no such row
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
    return kept, vectors, time.perf_counter() - t0


def judge(signals: dict) -> tuple[bool, str, str, list[str]]:
    """(passed, verdict, one-sentence expectation, reasons) from compat signals."""
    rank, agree = signals["own_rank"], signals["agreement"]
    reasons = [f"a typical photo's own stored vector ranks in the top {rank:.2%} of the gallery "
               f"for its new query (limit {OWN_RANK_MAX:.0%})",
               f"neighbourhood agreement with the old queries {agree:.2f} (0 = unrelated, "
               f"limit {AGREEMENT_MIN:.2f})"]
    if rank > OWN_RANK_MAX or agree < AGREEMENT_MIN:
        return False, "incompatible", (
            "Search would return unrelated photos: this model's queries do not line up with the "
            "vectors this gallery stores."), reasons
    albums = signals.get("albums")
    if albums and albums["queries"] < MIN_ALBUM_QUERIES:
        return True, "compatible", (
            f"Queries will land in the same neighbourhoods as before; only {albums['queries']} "
            f"checked photos are in albums (at least {MIN_ALBUM_QUERIES} are needed to measure "
            f"whether search gets better), so the change in quality is not measured."), reasons
    if not albums:
        return True, "compatible", (
            "Queries will land in the same neighbourhoods as before, but whether they get better "
            "cannot be measured without albums: a model trained on other photos can make search "
            "worse here, so put photos into albums to measure it, or fit an upgrade to this "
            "gallery."), reasons
    old, new = albums["old/old"], albums["new/old"]
    figures = (f"on {albums['queries']} album photos top-1 {old['top1']:.3f} → {new['top1']:.3f}, "
               f"mAP {old['map']:.3f} → {new['map']:.3f}, {albums['nfr']:.1%} of searches that "
               f"were right would turn wrong")
    worse = (albums["delta_map"] < -max(WORSE_MAP, albums["delta_map_se"])
             or albums["delta_top1"] < -max(WORSE_TOP1, albums["delta_top1_se"]))
    if worse:
        return False, "worse", f"Search would get worse: {figures}.", reasons
    if albums["delta_map"] > max(WORSE_MAP, albums["delta_map_se"]):
        return True, "better", f"Search should improve at once: {figures}.", reasons
    return True, "no worse", f"Search should stay about as good: {figures}.", reasons


def preflight(gallery: Gallery, model: Embedder, sample: int = PREFLIGHT_SAMPLE,
              top: int = PREFLIGHT_TOP, reference: int = REFERENCE_SIZE) -> Preflight:
    """Embed a sample of the gallery's photos with `model` and measure how its queries sit among
    the stored vectors. Nothing is written."""
    t0 = time.perf_counter()
    space = gallery.space
    members = gallery.catalog.space_members(space, exclude_model=model.name)
    if len(members) < 2:
        everything = len(gallery.catalog.space_members(space)) >= 2
        return Preflight(0, 1.0, top, 1.0, OWN_RANK_MAX, True, 0.0, verdict="empty", expectation=(
            f"Every stored photo is already embedded by {model.name}: searches will look as they "
            f"did when it was last active." if everything else
            "The gallery has too few photos to check; nothing to lose."))
    rng = np.random.default_rng(SEED)
    order = rng.permutation(members)
    rule = holdout_rule(model)
    if rule:  # a gallery-fitted model: only photos it was never trained on may judge it
        shas = {p.id: p.sha256 for p in gallery.catalog.space_photos(space)}
        candidates = [int(i) for i in order if in_holdout(shas[int(i)], rule)]
        if not candidates:  # photos added after fitting, none held out: check on any
            candidates, rule = order.tolist(), None
    else:
        candidates = order.tolist()
    kept, new_q, embed_s = embed_stored_photos(gallery, model, candidates, sample)
    if not kept:
        return Preflight(0, 0.0, top, 0.0, OWN_RANK_MAX, False, round(time.perf_counter() - t0, 3),
                         verdict="incompatible", expectation="No stored photo could be read.")
    chosen = set(kept)
    others = [int(i) for i in order[: reference + len(kept)] if int(i) not in chosen]
    others = others[: max(0, reference - len(kept))]
    ref_ids = kept + others
    stored = gallery.catalog.serving_vectors_of(ref_ids, space)
    ref_ids = [i for i in ref_ids if i in stored]
    ref = np.stack([stored[i] for i in ref_ids])
    pos = {i: n for n, i in enumerate(ref_ids)}
    kept_ok = [n for n, i in enumerate(kept) if i in pos]
    new_q, kept = new_q[kept_ok], [kept[n] for n in kept_ok]
    old_q = np.stack([stored[i] for i in kept])
    own_index = np.array([pos[i] for i in kept])
    labels = gallery.catalog.album_labels(ref_ids)
    signals = metrics.compat_signals(new_q, old_q, ref, own_index, [labels[i] for i in kept],
                                     [labels[i] for i in ref_ids], top=top)
    passed, verdict, expectation, reasons = judge(signals)
    return Preflight(
        sample=len(kept), self_recall=signals["own_in_top"], top=top,
        mean_cosine=signals["mean_cosine"], threshold=OWN_RANK_MAX, passed=passed,
        seconds=round(time.perf_counter() - t0, 3), own_rank=signals["own_rank"],
        own_in_top_1pct=signals["own_in_top_1pct"], agreement=signals["agreement"],
        reference=len(ref), albums=signals.get("albums"), verdict=verdict,
        expectation=expectation, reasons=reasons,
        images_per_second=round(len(kept) / embed_s, 2) if embed_s else 0.0,
        held_out_only=bool(rule))


def summary(p: Preflight) -> str:
    """One line for the CLI and the app."""
    state = "passed" if p.passed else "FAILED"
    return (f"pre-flight {state} ({p.verdict}, {p.sample} photos against {p.reference} stored "
            f"vectors): {p.expectation}")
