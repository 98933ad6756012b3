"""The album path's query blend: the fitted head's query and the old model's query searched
together over the stored vectors, score = w * old + (1 - w) * head (one query vector in the
stored space, so nothing in the gallery changes). The old query keeps what searches found
before, the head adds what the albums taught it: averages moved by the head alone lose every
right photo from some searches' first five (outside checks: 4 % of searches).

The weight is chosen on the training photos (never the held-out ones): the smallest old share
whose searches keep `KEPT_FLOOR` of their old first results and lose at most half the plan's
lost@5 limit; else the largest tried.
"""
from __future__ import annotations

import numpy as np

from models import metrics
from models.bridge import FIDELITY_K, overlap, top_k
from models.transform import normalise

from search.ops.bridge_plan import KEPT_FLOOR
from search.ops.plan import MAX_LOST_AT_5

WEIGHTS = (0.2, 0.35, 0.5, 0.65, 0.8)


def blend(old: np.ndarray, new: np.ndarray, weight: float) -> np.ndarray:
    return normalise(weight * np.asarray(old, np.float32) + (1 - weight) * np.asarray(new, np.float32)
                     ).astype(np.float32)


def choose_weight(old: np.ndarray, new: np.ndarray, labels: list) -> tuple[float, dict]:
    """(old share, what each weight measured) on these training photos searching each other."""
    own = np.arange(len(old))
    excluded = metrics.exclusion_mask(len(old), len(old), own)
    base = metrics.outcomes(old, old, labels, labels, excluded)
    keep_top = top_k(old, old, FIDELITY_K, excluded)
    tried = []
    for w in WEIGHTS:
        q = blend(old, new, w)
        s = metrics.path_summary(base, metrics.outcomes(q, old, labels, labels, excluded))
        kept = float(overlap(top_k(q, old, FIDELITY_K, excluded), keep_top).mean())
        tried.append({"weight": w, "kept_old": round(kept, 4), "map": s["map"],
                      "lost_at_5": s["lost_at_5"], "nfr": s["nfr"]})
    ok = [t for t in tried if t["kept_old"] >= KEPT_FLOOR and t["lost_at_5"] <= MAX_LOST_AT_5 / 2]
    chosen = min(ok, key=lambda t: t["weight"]) if ok else max(tried, key=lambda t: t["weight"])
    return chosen["weight"], {"chosen": chosen["weight"], "tried": tried, "photos": len(old),
                              "rule": f"smallest old share keeping {KEPT_FLOOR:.0%} of the old "
                                      f"first results, lost@5 <= {MAX_LOST_AT_5 / 2:.0%}"}
