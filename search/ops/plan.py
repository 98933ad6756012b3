"""The upgrade plan: every path an upgrade can take, measured on the same held-out photos and
judged by one rule, with the time each takes at this gallery's size and one recommendation.

Paths (queries are always the new model's):
  queries    search the vectors the gallery stores (the instant switch);
  transform  search the stored vectors moved into the model's space by arithmetic
             (`upgrade --transform`: the model's own head, or a learned map);
  backfill   search the model's own embedding of every photo (re-embed everything).
The one judge (`models.evaluation.judge`, here `judge_path`) decides the fit's verdict, the
pre-flight's and the plan's flags, so the command that follows a fit never contradicts it on a
smaller sample.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from models.evaluation.judge import PLAN, judge
from models.evaluation.score import (
    Summary,
    exclusion_mask,
    label_codes,
    near_duplicates,
    score,
    search,
)

from search.units import duration_text

PATHS = ("queries", "blend", "transform", "backfill")
# The one judge's limits (models/evaluation/judge.py, `PLAN`), under the names callers use:
# how much worse counts as worse (at least this much, and beyond twice the paired standard
# error, so a sample of 64 cannot overturn a gain measured on 300); what a recommended path may
# lose (outside checks: averages hid lost results); the label-free floor on the old first
# results kept (a compatible path keeps 0.5-0.8 of them here, docs/BENCHMARKS.md section 13).
WORSE_MAP = PLAN.worse_map
WORSE_TOP1 = PLAN.worse_top1
SIGNIFICANCE = PLAN.significance
MAX_LOST_AT_5 = PLAN.max_lost_at_5
MAX_NFR = PLAN.max_nfr
MAX_TOP5_DROP = PLAN.max_top5_drop
MIN_RETENTION = PLAN.min_retention
# Old-model similarity at or above which two photos count as shots of the same scene: such
# neighbours are left out of a held-out photo's results (they make a held-out slice score far
# above new query photos).
NEAR_DUPLICATE = 0.92
# Gallery-side arithmetic (read, map, write in batches): 5,970 vectors/s at 100k here, bound by
# the catalog (docs/BENCHMARKS.md section 13).
NOMINAL_TRANSFORM_PER_SECOND = 5000.0


def judge_path(s: dict) -> tuple[str, list[str]]:
    """(verdict, flags) of one path from its `Summary.as_dict()`: the one judge
    (`models.evaluation.judge`) with the plan's limits."""
    v = judge(s, PLAN)
    return v.verdict, v.flags


def measure(old_q: np.ndarray, new_q: np.ndarray, references: dict[str, np.ndarray],
            old_reference: np.ndarray, own_index: np.ndarray, q_labels: list, ref_labels: list,
            near_duplicate: float = NEAR_DUPLICATE) -> dict:
    """Every path on the same labelled queries: `references` maps a path to its gallery
    (the rows of `old_reference`, moved or re-embedded), or to (its own queries, its gallery).
    Near duplicates of each query (by the old model) and its own photo never count as results.
    Each path is one `score` against the same old searches."""
    near = near_duplicates(old_q, old_reference, near_duplicate)
    rows = np.flatnonzero(own_index >= 0)
    near[rows, own_index[rows]] = False
    excluded = exclusion_mask(len(old_q), len(old_reference), own_index, near)
    # only queries with a right answer left in the gallery can be judged by labels
    q_codes, ref_codes = label_codes(q_labels, ref_labels)
    same = q_codes[:, None] == ref_codes[None, :]
    judged = np.flatnonzero((same & ~excluded).any(1))
    old_q, new_q, excluded = old_q[judged], new_q[judged], excluded[judged]
    q_labels = [q_labels[i] for i in judged]
    base = search(old_q, old_reference, excluded, q_labels, ref_labels)
    out: dict[str, Any] = {"queries": int(len(old_q)), "reference": int(len(old_reference)),
           "old": Summary(base, base).as_dict(),
           "near_duplicates": {"rule": f"old-model cosine >= {near_duplicate}",
                               "queries_with_any": round(float(near.any(1).mean()), 4),
                               "left_out": int(near.sum())},
           "paths": {}}
    for path, reference in references.items():
        queries = new_q
        if isinstance(reference, tuple):
            queries, reference = reference[0][judged], reference[1]
        summary = score(old_q, queries, old_reference, reference, q_labels, ref_labels,
                        excluded, old=base).as_dict()
        summary["verdict"], summary["flags"] = judge_path(summary)
        out["paths"][path] = summary
    return out


def plan_rows(measured: dict, seconds: dict[str, float], photos_embedded: dict[str, int]) -> list[dict]:
    """The plan as the JSON contract has it: one row per path with its figures and cost."""
    rows = []
    for path in PATHS:
        s = measured["paths"].get(path)
        if s is None:
            continue
        rows.append({"path": path, "top1": s["top1"], "top5": s["top5"], "map": s["map"],
                     "nfr": s["nfr"], "lost_at_5": s["lost_at_5"], "lost_at_10": s["lost_at_10"],
                     "retention": s["retention"], "seconds": round(seconds[path], 1),
                     "photos_embedded": photos_embedded[path], "verdict": s["verdict"],
                     "flags": s["flags"],
                     "se": {k: s[f"{k}_se"] for k in ("top1", "top5", "map", "lost_at_5")}})
    return rows


def next_command(name: str, path: str | None) -> list[str] | None:
    """The argv after `graceful` that takes a fitted model's recommended path (None: keep)."""
    return {"queries": ["upgrade", name], "blend": ["upgrade", name, "--mode", "fused"],
            "transform": ["upgrade", name, "--transform"],
            "backfill": ["upgrade", name, "--transform"]}.get(path or "")


def recommend(rows: list[dict], old: dict) -> tuple[str | None, str]:
    """(path or None, one sentence why). Eligible: measured no worse and nothing flagged; of
    those the best mAP, unless a cheaper one is within its uncertainty."""
    ok = [r for r in rows if r["verdict"] != "worse" and not r["flags"]]
    if not ok:
        worst = min(rows, key=lambda r: (r["verdict"] != "worse", -len(r["flags"])), default=None)
        why = (worst["flags"][0] if worst and worst["flags"] else "it measured worse")
        return None, (f"Keep the current model: no path is safe on this gallery "
                      f"({worst['path'] if worst else 'every path'}: {why}).")
    best = max(ok, key=lambda r: r["map"])
    margin = max(WORSE_MAP, best["se"]["map"])
    cheapest = min((r for r in ok if r["map"] >= best["map"] - margin),
                   key=lambda r: (r["seconds"], PATHS.index(r["path"])))
    c = cheapest
    text = (f"{c['path']}: mAP {old['map']:.3f} → {c['map']:.3f}, top-5 {old['top5']:.3f} → "
            f"{c['top5']:.3f}, lost@5 {c['lost_at_5']:.3f}, in {duration_text(c['seconds'])}")
    others = [r for r in rows if r is not c]
    better = [r for r in others if r["map"] > c["map"] + margin]
    if better:
        b = max(better, key=lambda r: r["map"])
        text += (f"; {b['path']} would reach mAP {b['map']:.3f} but "
                 + ("loses results (" + b["flags"][0] + ")" if b["flags"] else "measured worse"))
    elif len(ok) > 1:
        text += "; the others add no measurable gain for their cost"
    return c["path"], "Recommended: " + text + "."
