"""Retrieval metrics (pure numpy): configurations of the one evaluation
(`models.evaluation.score`), kept under the names the engine and the benches call.

Protocol (as in apple/ml-fct): queries and gallery are the same labelled images, embedded by the
query-side and the gallery-side model; leave-one-out, so a query never matches its own image.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.evaluation.score import (
    LOST_KS,
    Outcomes,
    Summary,
    average_precision,
    exclusion_mask,
    flip_rates,
    mean_se,
    near_duplicates,
    need_labels,
    score,
    search,
)

__all__ = ["LOST_KS", "Outcomes", "Summary", "average_precision", "exclusion_mask", "flip_rates",
           "mean_se", "near_duplicates", "score", "search"]


@dataclass
class RetrievalResult:
    top1: float
    top5: float
    map: float
    correct_top1: np.ndarray  # bool per query: the nearest other image has the query's label

    def summary(self) -> dict:
        return {"top1": round(self.top1, 4), "top5": round(self.top5, 4), "map": round(self.map, 4)}


def rank_matrix(queries: np.ndarray, gallery: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Indices of gallery items by decreasing similarity, each query's own index removed.

    Assumes query i and gallery item i are the same image (leave-one-out)."""
    n = len(queries)
    order = np.empty((n, n - 1), dtype=np.int64)
    for s in range(0, n, chunk):
        sims = queries[s:s + chunk] @ gallery.T
        rows = np.arange(len(sims))
        sims[rows, s + rows] = -np.inf
        o = np.argsort(-sims, axis=1, kind="stable")
        order[s:s + chunk] = o[:, :-1]  # the -inf self match sorts last
    return order


def evaluate(queries: np.ndarray, gallery: np.ndarray, labels: np.ndarray) -> RetrievalResult:
    """One side of ml-fct's protocol (old/old, new/old or new/new): `search` leave-one-out."""
    n = len(queries)
    o = search(queries, gallery, np.eye(n, len(gallery), dtype=bool), labels, labels)
    top1 = need_labels(o.top1)
    return RetrievalResult(float(top1.mean()), float(need_labels(o.hits)[5].mean()),
                           float(need_labels(o.ap).mean()), top1)


def ml_fct_pairs(old_q: np.ndarray, new_q: np.ndarray, labels, old: Outcomes | None = None
                 ) -> tuple[Summary, Summary]:
    """ml-fct's new/old and new/new, leave-one-out on one labelled set, each scored against
    old/old: two scores of the one evaluation sharing the old side (`old`: its searches, when
    already made)."""
    own = np.arange(len(old_q))
    cross = score(old_q, new_q, old_q, old_q, labels, labels, own_index=own, old=old)
    same = score(old_q, new_q, old_q, new_q, labels, labels, own_index=own, old=cross.old)
    return cross, same


def overlap_at_k(a: list[int], b: list[int], k: int) -> float:
    return len(set(a[:k]) & set(b[:k])) / k if k else 0.0


# -- compatibility signals: how a new model's queries sit among a gallery's old vectors --------
# Every signal is measured against a reference set (a uniform sample of the gallery, or all of
# it) and expressed as a fraction of it, so the same model on photos of the same kind scores the
# same at 100 or 100k photos.

def own_rank_fraction(new_q: np.ndarray, own_old: np.ndarray, reference: np.ndarray,
                      own_index: np.ndarray) -> np.ndarray:
    """Per query: the share of the reference set scoring higher than the query's own stored
    vector (0 = its own photo comes first; ~0.5 = an incompatible model). `own_index` is the
    position of the query's own photo in `reference` (-1 if absent); it is left out."""
    own_score = (new_q * own_old).sum(1)
    higher = (new_q @ reference.T) > own_score[:, None]
    rows = np.flatnonzero(own_index >= 0)
    higher[rows, own_index[rows]] = False
    n = len(reference) - (own_index >= 0)
    return higher.sum(1) / np.maximum(n, 1)


def _top_sets(q: np.ndarray, reference: np.ndarray, k: int, own_index: np.ndarray) -> np.ndarray:
    sims = q @ reference.T
    rows = np.flatnonzero(own_index >= 0)
    sims[rows, own_index[rows]] = -np.inf
    return np.argpartition(-sims, k - 1, axis=1)[:, :k]


def neighbourhood_agreement(new_q: np.ndarray, old_q: np.ndarray, reference: np.ndarray,
                            k: int, own_index: np.ndarray) -> np.ndarray:
    """Per query: overlap of the new query's k nearest reference items with the old query's,
    chance-corrected (0 = what an incompatible model scores, 1 = the same neighbourhood)."""
    n = len(reference) - 1
    k = max(1, min(k, n))
    a, b = _top_sets(new_q, reference, k, own_index), _top_sets(old_q, reference, k, own_index)
    overlap = np.array([len(np.intersect1d(x, y, assume_unique=True)) / k for x, y in zip(a, b)])
    chance = k / max(n, 1)
    return (overlap - chance) / max(1 - chance, 1e-9)


def label_retrieval(queries: np.ndarray, reference: np.ndarray, q_labels: list, ref_labels: list,
                    own_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query: (top-1 correct, average precision) over the reference set ranked by
    similarity, its own photo left out; relevant = same label (None is never relevant)."""
    o = search(queries, reference, exclusion_mask(len(queries), len(reference), own_index),
               q_labels, ref_labels)
    return need_labels(o.top1), need_labels(o.ap)


def compat_signals(new_q: np.ndarray, old_q: np.ndarray, reference: np.ndarray,
                   own_index: np.ndarray, q_labels: list | None = None,
                   ref_labels: list | None = None, agreement_fraction: float = 0.01,
                   min_k: int = 5, top: int = 10,
                   new_reference: np.ndarray | None = None) -> dict:
    """Everything the pre-flight and the gallery-fitted training measure, per query and summed
    up. `old_q` are the queries' own stored vectors; `reference` the gallery's old vectors.
    With labels (albums), old/old vs new/old retrieval over the reference set as well, and with
    `new_reference` (the reference items embedded by the new model) new/new too."""
    ranks = own_rank_fraction(new_q, old_q, reference, own_index)
    others = len(reference) - (own_index >= 0)
    k = max(min_k, int(round(agreement_fraction * len(reference))))
    agree = neighbourhood_agreement(new_q, old_q, reference, k, own_index)
    out: dict[str, Any] = {
        "queries": int(len(new_q)),
        "reference": int(len(reference)),
        "own_rank": round(float(np.median(ranks)), 5),
        "own_rank_mean": round(float(ranks.mean()), 5),
        "own_in_top_1pct": round(float((ranks <= 0.01).mean()), 4),
        "own_in_top": round(float((ranks * others < top).mean()), 4),
        "top": int(top),
        "agreement": round(float(agree.mean()), 4),
        "agreement_k": int(min(k, len(reference) - 1)),
        "mean_cosine": round(float((new_q * old_q).sum(1).mean()), 4),
    }
    if q_labels is not None and ref_labels is not None:
        count = Counter(ref_labels)
        keep = np.array([lab is not None and count[lab] >= 2 for lab in q_labels])
        if keep.sum() >= 2:
            sel = np.flatnonzero(keep)
            labs = [q_labels[i] for i in sel]
            # old/old vs new/old over the reference set: one score
            s = score(old_q[sel], new_q[sel], reference, reference, labs, ref_labels,
                      own_index=own_index[sel])
            out["albums"] = {
                "queries": int(len(sel)),
                "old/old": s.side("old"),
                "new/old": s.side("new"),
                **flip_rates(s.per_query("top1", "old"), s.per_query("top1")),
            }
            out["albums"]["delta_map"], out["albums"]["delta_map_se"] = s.delta("map")
            out["albums"]["delta_top1"], out["albums"]["delta_top1_se"] = s.delta("top1")
            if new_reference is not None:  # new/new: the same old side
                w = score(old_q[sel], new_q[sel], reference, new_reference, labs, ref_labels,
                          own_index=own_index[sel], old=s.old)
                out["albums"]["new/new"] = {**w.side("new"),
                                             **flip_rates(s.per_query("top1", "old"),
                                                          w.per_query("top1"))}
    return out


# -- paths of an upgrade: per-query outcomes, lost results and their uncertainty -------------
# An upgrade can move queries only (new queries, old gallery), the gallery too (a transform of
# the stored vectors) or everything (a backfill). Each path is judged per query against the old
# model's own searches, so averages cannot hide the searches that lose every right result.


def outcomes(queries: np.ndarray, reference: np.ndarray, q_labels: list, ref_labels: list,
             excluded: np.ndarray, ks: tuple = (1, 5, 10), keep: int = 10) -> Outcomes:
    """Rank `reference` for each query (excluded items never count) and score it by labels."""
    return search(queries, reference, excluded, q_labels, ref_labels, ks, keep)


def lost_at_k(old: Outcomes, new: Outcomes, k: int) -> np.ndarray:
    """Per query: it had a right photo in its old top-k and has none in the new top-k."""
    return Summary(old, new).lost(k)


def retention(old: Outcomes, new: Outcomes) -> np.ndarray:
    """Per query, label-free: the share of its old first results kept among its new ones."""
    return Summary(old, new).kept()


def path_summary(old: Outcomes, new: Outcomes) -> dict:
    """Top-1/top-5/mAP of a path, flips and lost@k against the old searches, each with its
    standard error (deltas are paired, per query): `Summary.as_dict`."""
    return Summary(old, new).as_dict()
