"""Retrieval metrics (pure numpy): top-k, mAP over the full ranking, flip rates.

Protocol (as in apple/ml-fct): queries and gallery are the same labelled images, embedded by the
query-side and the gallery-side model; leave-one-out, so a query never matches its own image.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np


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


def average_precision(relevant: np.ndarray) -> np.ndarray:
    """AP per row of a boolean relevance matrix in ranked order (rows with none -> 0)."""
    rel = relevant.astype(np.float64)
    hits = np.cumsum(rel, axis=1)
    ranks = np.arange(1, rel.shape[1] + 1)
    n_rel = rel.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (hits / ranks * rel).sum(axis=1) / n_rel
    return np.nan_to_num(ap)


def evaluate(queries: np.ndarray, gallery: np.ndarray, labels: np.ndarray) -> RetrievalResult:
    labels = np.asarray(labels)
    order = rank_matrix(queries, gallery)
    relevant = labels[order] == labels[:, None]
    correct1 = relevant[:, 0]
    top5 = relevant[:, :5].any(axis=1)
    return RetrievalResult(float(correct1.mean()), float(top5.mean()),
                           float(average_precision(relevant).mean()), correct1)


def flip_rates(old_correct: np.ndarray, new_correct: np.ndarray,
               mask: np.ndarray | None = None) -> dict:
    """NFR: share of queries right before and wrong after; PFR: wrong before, right after.

    Both are shares of all (masked) queries, as in Yan et al. (PCT)."""
    old_correct = np.asarray(old_correct, bool)
    new_correct = np.asarray(new_correct, bool)
    if mask is not None:
        old_correct, new_correct = old_correct[mask], new_correct[mask]
    n = len(old_correct)
    if n == 0:
        return {"nfr": 0.0, "pfr": 0.0, "queries": 0}
    return {"nfr": round(float((old_correct & ~new_correct).mean()), 4),
            "pfr": round(float((~old_correct & new_correct).mean()), 4), "queries": n}


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
    ref = np.array([x if x is not None else "\0none" for x in ref_labels], dtype=object)
    sims = queries @ reference.T
    rows = np.flatnonzero(own_index >= 0)
    sims[rows, own_index[rows]] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")
    relevant = ref[order] == np.array(q_labels, dtype=object)[:, None]
    relevant[rows, -1] = False  # the own photo (sorted last, at -inf) is not a result
    return relevant[:, 0].copy(), average_precision(relevant)


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
            o1, oap = label_retrieval(old_q[sel], reference, labs, ref_labels, own_index[sel])
            n1, nap = label_retrieval(new_q[sel], reference, labs, ref_labels, own_index[sel])
            d_ap = nap - oap
            out["albums"] = {
                "queries": int(len(sel)),
                "old/old": {"top1": round(float(o1.mean()), 4), "map": round(float(oap.mean()), 4)},
                "new/old": {"top1": round(float(n1.mean()), 4), "map": round(float(nap.mean()), 4)},
                **flip_rates(o1, n1),
                "delta_map": round(float(d_ap.mean()), 4),
                "delta_map_se": round(float(d_ap.std(ddof=1) / np.sqrt(len(sel))), 4),
                "delta_top1": round(float((n1.astype(float) - o1).mean()), 4),
                "delta_top1_se": round(float((n1.astype(float) - o1).std(ddof=1) / np.sqrt(len(sel))), 4),
            }
            if new_reference is not None:
                w1, wap = label_retrieval(new_q[sel], new_reference, labs, ref_labels, own_index[sel])
                out["albums"]["new/new"] = {"top1": round(float(w1.mean()), 4),
                                            "map": round(float(wap.mean()), 4), **flip_rates(o1, w1)}
    return out


# -- paths of an upgrade: per-query outcomes, lost results and their uncertainty -------------
# An upgrade can move queries only (new queries, old gallery), the gallery too (a transform of
# the stored vectors) or everything (a backfill). Each path is judged per query against the old
# model's own searches, so averages cannot hide the searches that lose every right result.

LOST_KS = (5, 10)


@dataclass
class Outcomes:
    """Per labelled query: right photo first, a right photo within the first k, and AP."""
    top1: np.ndarray
    hits: dict  # k -> bool array
    ap: np.ndarray
    neighbours: np.ndarray  # (queries, k) reference positions of the first results


def exclusion_mask(n_queries: int, n_reference: int, own_index: np.ndarray,
                   near: np.ndarray | None = None) -> np.ndarray:
    """Reference items that may not count as a query's result: its own photo and (optionally)
    its near duplicates."""
    mask = np.zeros((n_queries, n_reference), bool) if near is None else near.copy()
    rows = np.flatnonzero(own_index >= 0)
    mask[rows, own_index[rows]] = True
    return mask


def near_duplicates(old_q: np.ndarray, old_reference: np.ndarray, threshold: float) -> np.ndarray:
    """(queries, reference) mask of items the old model finds at least `threshold` similar to
    a query: shots of the same scene, which inflate every number measured on a held-out slice."""
    return (old_q @ old_reference.T) >= threshold


def outcomes(queries: np.ndarray, reference: np.ndarray, q_labels: list, ref_labels: list,
             excluded: np.ndarray, ks: tuple = (1, 5, 10), keep: int = 10) -> Outcomes:
    """Rank `reference` for each query (excluded items never count) and score it by labels."""
    ref = np.array([x if x is not None else "\0none" for x in ref_labels], dtype=object)
    sims = queries @ reference.T
    sims[excluded] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")
    relevant = ref[order] == np.array(q_labels, dtype=object)[:, None]
    relevant &= ~np.take_along_axis(excluded, order, axis=1)
    return Outcomes(relevant[:, 0].copy(), {k: relevant[:, :k].any(1) for k in ks},
                    average_precision(relevant), order[:, :keep].copy())


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return float(x.mean()) if len(x) else 0.0, 0.0
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x)))


def lost_at_k(old: Outcomes, new: Outcomes, k: int) -> np.ndarray:
    """Per query: it had a right photo in its old top-k and has none in the new top-k."""
    return old.hits[k] & ~new.hits[k]


def retention(old: Outcomes, new: Outcomes) -> np.ndarray:
    """Per query, label-free: the share of its old first results (old query, old gallery) that
    stay among its new first results. Albums cannot see what this measures: the similarity
    users relied on inside an album (the same product, the same place)."""
    return np.array([len(np.intersect1d(a, b)) / max(len(a), 1)
                     for a, b in zip(old.neighbours, new.neighbours)])


def path_summary(old: Outcomes, new: Outcomes) -> dict:
    """Top-1/top-5/mAP of a path, flips and lost@k against the old searches, each with its
    standard error (deltas are paired, per query)."""
    out: dict = {"queries": int(len(new.top1))}
    for key, arr in (("top1", new.top1), ("top5", new.hits[5]), ("map", new.ap)):
        m, se = _mean_se(arr)
        out[key], out[f"{key}_se"] = round(m, 4), round(se, 4)
    for key, a, b in (("top1", old.top1, new.top1), ("top5", old.hits[5], new.hits[5]),
                      ("map", old.ap, new.ap)):
        m, se = _mean_se(np.asarray(b, float) - np.asarray(a, float))
        out[f"delta_{key}"], out[f"delta_{key}_se"] = round(m, 4), round(se, 4)
    out.update({k: v for k, v in flip_rates(old.top1, new.top1).items() if k != "queries"})
    out["nfr_se"] = round(_mean_se(old.top1 & ~new.top1)[1], 4)
    for k in LOST_KS:
        m, se = _mean_se(lost_at_k(old, new, k))
        out[f"lost_at_{k}"], out[f"lost_at_{k}_se"] = round(m, 4), round(se, 4)
    m, se = _mean_se(retention(old, new))
    out["retention"], out["retention_se"] = round(m, 4), round(se, 4)
    return out
