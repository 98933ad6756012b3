"""Retrieval metrics (pure numpy): top-k, mAP over the full ranking, flip rates.

Protocol (as in apple/ml-fct): queries and gallery are the same labelled images, embedded by the
query-side and the gallery-side model; leave-one-out, so a query never matches its own image.
"""
from __future__ import annotations

from dataclasses import dataclass

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
