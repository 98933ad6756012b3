"""The one evaluation (pure numpy): old vs new, scored one way.

An upgrade is always the same question: queries that searched a reference one way (old queries,
old reference) now search it another (new queries, a reference as the new path serves it).
`score` answers it for one (queries, reference, relevance) pair and returns one `Summary`:

  labelled (relevance = same label; None is never relevant):
    top-1, top-5, mAP (over the full ranking) of each side, their paired deltas, NFR/PFR
    (flips of the first result), lost@k (a right photo in the old first k, none in the new);
  label-free, always:
    kept (retention): the share of each query's old first 10 results among its new ones; with
    a full re-embed as the old side the same figure is the fidelity to it;
each a mean over queries with its standard error. Items `excluded` for a query (its own photo,
near duplicates) never count as its results.

Everything that compares two models is a configuration of it (ml-fct's old/old, new/old, new/new
over one evaluate): `models.metrics.evaluate` (leave-one-out, one side), the pre-flight's album
figures (`metrics.compat_signals`), the upgrade plan and the bridge plan (`search.ops.plan`,
`search.ops.bridge_plan`), the blend choices of a fit, `compare` and the backfill curve (their
rankings come from the index: `relevance_outcomes`), and the benches. Their verdicts come from
one judge (`models.evaluation.judge`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np

KS = (1, 5, 10)  # hits are kept at these depths
LOST_KS = (5, 10)  # lost@k is reported at these depths
KEEP = 10  # first results kept per query: kept-old and fidelity are overlaps of these
CHUNK = 1024  # queries ranked at once (bounds memory on large query sets)


def average_precision(relevant: np.ndarray) -> np.ndarray:
    """AP per row of a boolean relevance matrix in ranked order (rows with none -> 0)."""
    rel = relevant.astype(np.float64)
    hits = np.cumsum(rel, axis=1)
    ranks = np.arange(1, rel.shape[1] + 1)
    n_rel = rel.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (hits / ranks * rel).sum(axis=1) / n_rel
    return np.nan_to_num(ap)


def mean_se(x: np.ndarray) -> tuple[float, float]:
    """Mean over queries and its standard error (0 with fewer than two)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return float(x.mean()) if len(x) else 0.0, 0.0
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x)))


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


def exclusion_mask(n_queries: int, n_reference: int, own_index: np.ndarray,
                   near: np.ndarray | None = None) -> np.ndarray:
    """Reference items that may not count as a query's result: its own photo (`own_index`, -1
    for none) and (optionally) its near duplicates."""
    mask = np.zeros((n_queries, n_reference), bool) if near is None else near.copy()
    own_index = np.asarray(own_index)
    rows = np.flatnonzero(own_index >= 0)
    mask[rows, own_index[rows]] = True
    return mask


def near_duplicates(old_q: np.ndarray, old_reference: np.ndarray, threshold: float) -> np.ndarray:
    """(queries, reference) mask of items the old model finds at least `threshold` similar to
    a query: shots of the same scene, which inflate every number measured on a held-out slice."""
    return (old_q @ old_reference.T) >= threshold


def top_k(queries: np.ndarray, reference: np.ndarray, k: int, excluded: np.ndarray | None = None
          ) -> np.ndarray:
    """(queries, k) positions of each query's first k results; excluded items never count."""
    sims = queries @ reference.T
    if excluded is not None:
        sims[excluded] = -np.inf
    k = min(k, reference.shape[0])
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(-sims, part, axis=1).argsort(axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row: the share of a's results that are among b's."""
    return np.array([len(np.intersect1d(x, y)) / max(len(x), 1) for x, y in zip(a, b)])


T = TypeVar("T")


def need_labels(figures: T | None) -> T:
    """A side's per-query top1, hits or AP: only labelled searches have them."""
    if figures is None:
        raise ValueError("label-free outcomes have no top-1, hits or AP (the queries need labels)")
    return figures


@dataclass(frozen=True)
class Outcomes:
    """One side's searches, per query: right photo first, a right photo within the first k, AP
    (None when label-free), and the positions of its first results."""
    top1: np.ndarray | None
    hits: dict | None  # k -> bool array
    ap: np.ndarray | None
    neighbours: np.ndarray  # (queries, KEEP) reference positions of the first results

    def rows(self, rows: np.ndarray) -> Outcomes:
        """The same searches for a subset of the queries."""
        return Outcomes(None if self.top1 is None else self.top1[rows],
                        None if self.hits is None else {k: v[rows] for k, v in self.hits.items()},
                        None if self.ap is None else self.ap[rows], self.neighbours[rows])


def label_codes(q_labels, ref_labels) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes that compare as the labels do: None never matches, nor does a query label
    no reference item has."""
    codes: dict = {}
    ref = np.array([-1 if x is None else codes.setdefault(x, len(codes)) for x in ref_labels],
                   dtype=np.int64)
    q = np.array([-2 if x is None else codes.get(x, -2) for x in q_labels], dtype=np.int64)
    return q, ref


def relevance_outcomes(relevant: np.ndarray, neighbours: np.ndarray | None = None,
                       ks: tuple = KS) -> Outcomes:
    """Outcomes of rankings made elsewhere (an index): a boolean relevance matrix in ranked
    order (rows padded with False)."""
    relevant = np.asarray(relevant, bool)
    if neighbours is None:
        neighbours = np.zeros((len(relevant), 0), np.int64)
    return Outcomes(relevant[:, 0].copy(), {k: relevant[:, :k].any(1) for k in ks},
                    average_precision(relevant), neighbours)


def search(queries: np.ndarray, reference: np.ndarray, excluded: np.ndarray | None = None,
           q_labels=None, ref_labels=None, ks: tuple = KS, keep: int = KEEP) -> Outcomes:
    """Rank `reference` for each query (excluded items never count) and, with labels, score the
    full ranking; label-free only the first `keep` results are found."""
    if q_labels is None or ref_labels is None:
        return Outcomes(None, None, None, top_k(queries, reference, keep, excluded))
    q_codes, ref_codes = label_codes(q_labels, ref_labels)
    top1, ap, neighbours = [], [], []
    hits: dict = {k: [] for k in ks}
    for s in range(0, max(len(queries), 1), CHUNK):
        sims = queries[s:s + CHUNK] @ reference.T
        ex = None if excluded is None else excluded[s:s + CHUNK]
        if ex is not None:
            sims[ex] = -np.inf
        order = np.argsort(-sims, axis=1, kind="stable")
        relevant = ref_codes[order] == q_codes[s:s + CHUNK, None]
        if ex is not None:
            relevant &= ~np.take_along_axis(ex, order, axis=1)
        top1.append(relevant[:, 0].copy())
        for k in ks:
            hits[k].append(relevant[:, :k].any(1))
        ap.append(average_precision(relevant))
        neighbours.append(order[:, :keep].copy())
    return Outcomes(np.concatenate(top1), {k: np.concatenate(v) for k, v in hits.items()},
                    np.concatenate(ap), np.concatenate(neighbours))


def _r(m_se: tuple[float, float]) -> tuple[float, float]:
    return round(m_se[0], 4), round(m_se[1], 4)


@dataclass(frozen=True)
class Summary:
    """Old vs new on the same queries: every figure per query, summed up with its standard
    error (deltas are paired, per query)."""
    old: Outcomes
    new: Outcomes

    @property
    def queries(self) -> int:
        return int(len(self.new.neighbours))

    @property
    def labelled(self) -> bool:
        return self.new.top1 is not None and self.old.top1 is not None

    def per_query(self, name: str, side: str = "new") -> np.ndarray:
        """top1, top5 (or top{k}), map of one side."""
        o = self.new if side == "new" else self.old
        if name == "top1":
            return need_labels(o.top1)
        if name == "map":
            return need_labels(o.ap)
        return need_labels(o.hits)[int(name[3:])]

    def figure(self, name: str, side: str = "new") -> tuple[float, float]:
        """(mean, se) of top1/top5/map on one side, rounded."""
        return _r(mean_se(self.per_query(name, side)))

    def delta(self, name: str) -> tuple[float, float]:
        return _r(mean_se(np.asarray(self.per_query(name), float)
                          - np.asarray(self.per_query(name, "old"), float)))

    def lost(self, k: int) -> np.ndarray:
        """Per query: it had a right photo in its old top-k and has none in the new top-k."""
        return need_labels(self.old.hits)[k] & ~need_labels(self.new.hits)[k]

    def nfr(self) -> np.ndarray:
        return self.per_query("top1", "old") & ~self.per_query("top1")

    def kept(self) -> np.ndarray:
        """Per query, label-free: the share of its old first results among its new ones (with a
        full re-embed as the old side: fidelity to it). Albums cannot see what this measures:
        the similarity users relied on inside an album (the same product, the same place)."""
        return overlap(self.new.neighbours, self.old.neighbours)

    def side(self, side: str = "new", names: tuple = ("top1", "map")) -> dict:
        """One side's figures without their errors ({"top1": .., "map": ..})."""
        return {n: self.figure(n, side)[0] for n in names}

    def as_dict(self) -> dict:
        """The report's form of a path (the upgrade plan's JSON contract): label-free, the
        queries and the kept share; labelled, top-1/top-5/mAP, their deltas, flips, lost@k and
        the kept share, each with its standard error."""
        out: dict = {"queries": self.queries}
        if self.labelled:
            for key in ("top1", "top5", "map"):
                out[key], out[f"{key}_se"] = self.figure(key)
            for key in ("top1", "top5", "map"):
                out[f"delta_{key}"], out[f"delta_{key}_se"] = self.delta(key)
            out.update({k: v for k, v in flip_rates(self.per_query("top1", "old"),
                                                      self.per_query("top1")).items()
                        if k != "queries"})
            out["nfr_se"] = _r(mean_se(self.nfr()))[1]
            for k in LOST_KS:
                out[f"lost_at_{k}"], out[f"lost_at_{k}_se"] = _r(mean_se(self.lost(k)))
        out["retention"], out["retention_se"] = _r(mean_se(self.kept()))
        return out


def score(old_queries: np.ndarray, new_queries: np.ndarray, old_reference: np.ndarray,
          new_reference: np.ndarray, q_labels=None, ref_labels=None,
          excluded: np.ndarray | None = None, own_index: np.ndarray | None = None,
          ks: tuple = KS, old: Outcomes | None = None) -> Summary:
    """Score old (old queries searching the old reference) against new (new queries searching
    the new reference): one `Summary`. Rows of the two references are the same photos. Left
    out of every query's results: `excluded` (queries x reference), else its own photo
    (`own_index`, -1 for none). `old`: the old side's searches, when already made."""
    if excluded is None and own_index is not None:
        excluded = exclusion_mask(len(new_queries), len(new_reference), own_index)
    if old is None:
        old = search(old_queries, old_reference, excluded, q_labels, ref_labels, ks)
    return Summary(old, search(new_queries, new_reference, excluded, q_labels, ref_labels, ks))
