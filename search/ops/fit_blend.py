"""The album path's query blend: the fitted head's query and the old model's query searched
together over the stored vectors, score = w * old + (1 - w) * head (one query vector in the
stored space, so nothing in the gallery changes). The old query keeps what searches found
before, the head adds what the albums taught it: averages moved by the head alone lose every
right photo from some searches' first five (outside checks: 4 % of searches).

The weight is chosen on a fifth of the training photos by a head trained on the other four
fifths (a head looks better on photos it learned from, which would pick too little of the old
query): those photos search every training photo; the smallest old share that keeps
`KEPT_FLOOR` of their old first results and loses at most half the plan's lost@5 limit wins,
else the largest tried. The held-out slice is never looked at.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from models.evaluation.score import exclusion_mask, score, search
from models.transform import normalise

from search.ops.bridge_plan import KEPT_FLOOR
from search.ops.plan import MAX_LOST_AT_5

WEIGHTS = (0.2, 0.35, 0.5, 0.65, 0.8)


def blend(old: np.ndarray, new: np.ndarray, weight: float) -> np.ndarray:
    return normalise(weight * np.asarray(old, np.float32) + (1 - weight) * np.asarray(new, np.float32)
                     ).astype(np.float32)


def choose_weight(old_q: np.ndarray, new_q: np.ndarray, q_labels: list, reference: np.ndarray,
                  ref_labels: list, own: np.ndarray) -> tuple[float, dict]:
    """(old share, what each weight measured): these queries (old and head vectors) searching
    `reference` (stored vectors; each query's own row `own` left out)."""
    excluded = exclusion_mask(len(old_q), len(reference), own)
    base = search(old_q, reference, excluded, q_labels, ref_labels)
    tried = []
    for w in WEIGHTS:
        s = score(old_q, blend(old_q, new_q, w), reference, reference, q_labels, ref_labels,
                  excluded, old=base).as_dict()
        tried.append({"weight": w, "kept_old": s["retention"], "map": s["map"],
                      "lost_at_5": s["lost_at_5"], "nfr": s["nfr"]})
    ok = [t for t in tried if t["kept_old"] >= KEPT_FLOOR and t["lost_at_5"] <= MAX_LOST_AT_5 / 2]
    chosen = min(ok, key=lambda t: t["weight"]) if ok else max(tried, key=lambda t: t["weight"])
    return chosen["weight"], {"chosen": chosen["weight"], "tried": tried, "photos": len(old_q),
                              "rule": f"smallest old share keeping {KEPT_FLOOR:.0%} of the old "
                                      f"first results, lost@5 <= {MAX_LOST_AT_5 / 2:.0%}, on "
                                      f"training photos a head trained without them"}


def honest_weight(train_on: Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]],
                  feats: np.ndarray, old: np.ndarray, labels: list, seed: int = 0
                  ) -> tuple[float, dict]:
    """The blend weight for a head on these training rows (features, stored vectors, albums):
    `train_on(rows)` trains a head on those rows and returns its embed function."""
    n = len(old)
    order = np.random.default_rng(seed).permutation(n)
    val, fit_rows = np.sort(order[: max(8, n // 5)]), np.sort(order[max(8, n // 5):])
    embed = train_on(fit_rows)
    return choose_weight(old[val], embed(feats[val]), [labels[i] for i in val], old, labels, val)
