"""Which photos a gallery fit learns from and measures on: how many (a fraction of a
backfill's work), stratified by album, the held-out slice chosen by a hash of each photo's
bytes; and the time a fit takes against a full backfill."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from search.errors import GalleryError
from search.ops.preflight import in_holdout


class FitError(GalleryError):
    """The gallery cannot be fitted as asked; the message says why and what to do."""


FIT_METHODS = ("auto", "bct", "pct", "adapter", "procrustes", "bridge")
MIN_PHOTOS = 20  # below this a held-out slice cannot say anything
SAMPLE_FLOOR = 1500  # photos the new backbone runs on, at least (or all, if fewer) ...
SAMPLE_SHARE = 8  # ... else one in this many photos of the gallery ...
SAMPLE_CAP = 5000  # ... up to this many
HELD_OUT_SHARE = 5  # one in five sampled photos measures, the rest train
HELD_OUT_MAX = 600
VECTOR_HELD_OUT_MAX = 2000  # a vector-only fit decodes nothing: it can measure on more photos
HOLDOUT = {"rule": "sha256-bucket", "salt": "graceful-holdout-1", "modulus": 5, "bucket": 0}
# Measured here (2 cores, batch 16, docs/BENCHMARKS.md): for estimates made before a model ran.
NOMINAL_IMAGES_PER_SECOND = {"lite0": 86.0, "lite1": 65.0, "lite2": 36.0}


# A label-free bridge (search.ops.bridge) grows its sample by doubling from CURVE_START while
# the gallery map's out-of-fold cosine gains at least CURVE_GAIN, within these bounds.
BRIDGE_SAMPLE_MIN = 200  # photos the new model runs on at least (all of a smaller gallery) ...
BRIDGE_SAMPLE_SHARE = 0.25  # ... and at most this share of the gallery ...
CURVE_START = 200
CURVE_GAIN = 0.005


def bridge_sample(photos: int, requested: int | None = None) -> int:
    """The most photos a bridge's new model runs on (`requested` overrides, within the gallery)."""
    if requested:
        return max(1, min(requested, photos))
    return min(photos, max(BRIDGE_SAMPLE_MIN, min(SAMPLE_CAP, int(photos * BRIDGE_SAMPLE_SHARE))))


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
    from models.train import LABELLED_METHODS  # torch: only a fit gets here

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


def plan_sample(members: list, labelled: bool, sample: int | None = None, seed: int = 0,
                held_max: int = HELD_OUT_MAX) -> tuple[list[int], list[int]]:
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
    n_held = min(held_max, max(8, total // HELD_OUT_SHARE), len(held_pool))
    if held_max > HELD_OUT_MAX:  # measuring costs no decoding: use the whole held-out slice
        n_held = min(held_max, len(held_pool))
    if total >= len(members) and len(held_pool) <= held_max:
        n_held = len(held_pool)  # a small gallery is used whole
    held = stratified(held_pool, labels, n_held, rng)
    n_train = total - min(len(held), max(8, total // HELD_OUT_SHARE))
    train = stratified(train_pool, labels, max(n_train, 0), rng)
    if len(train) < 8 or len(held) < 2:
        raise FitError(f"too few photos to learn from ({len(train)}) or to check on ({len(held)}); "
                       "index more photos or pass a larger --sample")
    return train, held


@dataclass
class _Sample:
    """The photos a fit learns from and measures on, with both sides of each."""
    train: list[int]
    held: list[int]
    feats: np.ndarray  # new backbone features, train rows then held rows
    old: np.ndarray  # stored vectors, same rows
    missing: int
    seconds: float
    embedded: int  # photos the new backbone ran on

    def rows(self, rows) -> "_Sample":
        """These training rows alone (no held-out photos): for a head trained on part."""
        return _Sample([self.train[i] for i in rows], [], self.feats[rows], self.old[rows],
                       self.missing, self.seconds, self.embedded)
