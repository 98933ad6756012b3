"""The upgrade plan's arithmetic (fast tier, synthetic vectors, no torch): lost@k, near
duplicates, one verdict rule that a small sample cannot overturn, the recommendation, the
learned gallery map and its residual estimate."""
from __future__ import annotations

import numpy as np
import pytest

from models import metrics
from models.transform import fit_linear_map

from search.ops import plan

pytestmark = pytest.mark.fast


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n=200, dim=32, classes=10, noise=0.6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = rng.integers(0, classes, n)
    return unit(centres[labels] + noise * rng.normal(size=(n, dim))), [f"c{k}" for k in labels]


def test_lost_at_k_counts_queries_that_lose_every_right_result():
    x, labels = clustered()
    own = np.arange(len(x))
    excl = metrics.exclusion_mask(len(x), len(x), own)
    old = metrics.outcomes(x, x, labels, labels, excl)
    same = metrics.path_summary(old, old)
    assert same["lost_at_5"] == 0 and same["nfr"] == 0 and same["retention"] == 1.0
    shuffled = metrics.outcomes(x, x[np.random.default_rng(1).permutation(len(x))], labels, labels, excl)
    s = metrics.path_summary(old, shuffled)
    lost = metrics.lost_at_k(old, shuffled, 5)
    assert s["lost_at_5"] == pytest.approx(lost.mean(), abs=1e-4) and s["lost_at_5"] > 0.3
    assert np.all(old.hits[5][lost]) and not np.any(shuffled.hits[5][lost])
    assert s["delta_map"] < 0 and s["delta_map_se"] > 0


def test_near_duplicates_are_left_out_of_a_queries_results():
    x, labels = clustered(n=60)
    dup = unit(x[:10] + 0.01)  # ten near copies of the first ten photos
    ref = np.concatenate([x, dup])
    ref_labels = labels + labels[:10]
    queries, q_labels, own = x[:10], labels[:10], np.arange(10)
    m = plan.measure(queries, queries, {"queries": ref}, ref, own, q_labels, ref_labels)
    assert m["near_duplicates"]["left_out"] >= 10
    assert m["near_duplicates"]["queries_with_any"] == 1.0
    # without the rule each query's copy would be its first result
    excl = metrics.exclusion_mask(10, len(ref), own)
    assert set(metrics.outcomes(queries, ref, q_labels, ref_labels, excl).neighbours[:, 0]) == \
        set(range(60, 70))


def summary(**kw):
    s = {"delta_map": 0.0, "delta_map_se": 0.01, "delta_top1": 0.0, "delta_top1_se": 0.01,
         "delta_top5": 0.0, "lost_at_5": 0.0, "nfr": 0.0, "retention": 0.7}
    s.update(kw)
    return s


def test_a_small_sample_cannot_overturn_a_measured_gain():
    """The grocery case: 64 photos, top-1 0.984 -> 0.938 (±0.027) while mAP rose +0.27: not
    "worse" (the fit had measured +0.31 mAP on 300)."""
    verdict, _ = plan.judge_path(summary(delta_top1=-0.046, delta_top1_se=0.027,
                                         delta_map=0.268, delta_map_se=0.03))
    assert verdict == "better"
    assert plan.judge_path(summary(delta_map=-0.05, delta_map_se=0.01))[0] == "worse"
    assert plan.judge_path(summary(delta_map=-0.015, delta_map_se=0.02))[0] == "no worse"
    assert plan.judge_path(summary(delta_top1=-0.1, delta_top1_se=0.02))[0] == "worse"


def test_flags_name_what_averages_hide():
    _, flags = plan.judge_path(summary(delta_map=0.2, lost_at_5=0.05, nfr=0.06, delta_top5=-0.03,
                                       retention=0.2))
    text = " ".join(flags)
    assert len(flags) == 4 and "lost@5" in text and "NFR" in text and "top-5" in text
    assert "similarity" in text
    assert plan.judge_path(summary(delta_map=0.2))[1] == []


def row(path, map_, seconds, verdict="better", flags=(), se=0.005):
    return {"path": path, "map": map_, "top1": 0.9, "top5": 0.95, "nfr": 0.0, "lost_at_5": 0.0,
            "seconds": seconds, "verdict": verdict, "flags": list(flags),
            "se": {"map": se, "top1": se, "top5": se, "lost_at_5": se}}


def test_recommend_the_cheapest_safe_path_within_its_uncertainty():
    old = {"map": 0.7, "top5": 0.95}
    rows = [row("queries", 0.75, 0), row("transform", 0.84, 30), row("backfill", 0.845, 3000)]
    path, why = plan.recommend(rows, old)
    assert path == "transform" and why.startswith("Recommended: transform")
    rows[1]["flags"] = ["4.0% of searches lose every right photo from their first five"]
    path, why = plan.recommend(rows, old)
    assert path == "backfill" and "transform would reach" not in why
    for r in rows:
        r["flags"] = ["loses"]
    path, why = plan.recommend(rows, old)
    assert path is None and why.startswith("Keep the current model")


def test_the_learned_map_is_cross_fitted_and_knows_where_it_is_unsure():
    rng = np.random.default_rng(0)
    old = unit(rng.normal(size=(400, 48)))
    w = rng.normal(size=(48, 32))
    new = unit(old @ w + 0.05 * rng.normal(size=(400, 32)))
    lmap, oof = fit_linear_map(old, new)
    assert lmap.spec["kind"] == "linear" and lmap.spec["pairs"] == 400
    held = unit(rng.normal(size=(100, 48)))
    truth = unit(held @ w)
    cos = (lmap.apply(held) * truth).sum(1)
    assert cos.mean() > 0.9
    assert (oof * new).sum(1).mean() < 1.0  # out of fold: not the training fit itself
    tensors = lmap.tensors()
    again = type(lmap).from_tensors(tensors, lmap.spec)
    assert np.allclose(again.apply(held), lmap.apply(held), atol=1e-5)
    # the expected residual follows the real one: the worst-mapped half is predicted worse
    real = 1 - cos
    est = lmap.uncertainty(held)
    assert est.shape == (100,) and np.all(est >= 0)
    worst = np.argsort(-real)[:50]
    assert est[worst].mean() > est[np.argsort(-real)[50:]].mean()
