"""The one evaluation and the one judge (fast tier, pure numpy, no torch): hand-checkable
top-1, mAP, flips, lost@k and kept figures; the configurations the engine runs (metrics.evaluate,
compat_signals' albums, plan.measure, path_summary) agree with `score`; one judge for the plan,
the pre-flight's gate and the bridge plan."""
from __future__ import annotations

import numpy as np
import pytest
from test_plan import summary as figures  # the plan tests' neutral figures, one copy

from models import metrics
from models.evaluation.judge import BRIDGE, PLAN, Verdict, judge
from models.evaluation.score import (
    Outcomes,
    Summary,
    label_codes,
    relevance_outcomes,
    score,
    search,
)

pytestmark = pytest.mark.fast

E = np.eye(4, dtype=np.float32)  # reference photos e0..e3
REF_LABELS = ["a", "a", "b", "b"]


def q(*weights):
    return np.array([weights], dtype=np.float32)


def test_top1_map_and_flips_by_hand():
    """Old query ranks e0, e1 (album a) first: top-1 right, AP 1. New query ranks e2 (b), e0,
    e1, e3: top-1 wrong, AP = (1/2 + 2/3) / 2 = 7/12. One query: NFR 1, PFR 0."""
    old_q, new_q = q(0.9, 0.1, 0, 0), q(0.1, 0.05, 0.9, 0)
    s = score(old_q, new_q, E, E, ["a"], REF_LABELS)
    assert s.old.top1.tolist() == [True] and s.new.top1.tolist() == [False]
    assert s.old.ap[0] == pytest.approx(1.0) and s.new.ap[0] == pytest.approx(7 / 12)
    assert s.new.neighbours[0].tolist() == [2, 0, 1, 3]
    d = s.as_dict()
    assert d["top1"] == 0.0 and d["top5"] == 1.0 and d["map"] == round(7 / 12, 4)
    assert d["delta_map"] == round(7 / 12 - 1, 4) and d["delta_top1"] == -1.0
    assert d["nfr"] == 1.0 and d["pfr"] == 0.0
    assert d["lost_at_5"] == 0.0 and d["retention"] == 1.0  # all four are in both first ten
    assert judge(d).verdict == "worse"


def test_own_photo_and_excluded_items_never_count():
    """The query is photo e0 itself: left out, its album mate e1 is the first right result."""
    own = np.array([0])
    s = score(q(1, 0, 0, 0), q(1, 0, 0, 0), E, E, ["a"], REF_LABELS, own_index=own)
    assert s.new.top1[0] and s.new.neighbours[0, 0] == 1 and 0 not in s.new.neighbours[0][:3]
    assert s.new.ap[0] == pytest.approx(1.0)  # one right photo (e1), found first
    # e1 excluded too (a near duplicate): no right photo is left
    ex = np.array([[True, True, False, False]])
    s = score(q(1, 0.5, 0, 0), q(1, 0.5, 0, 0), E, E, ["a"], REF_LABELS, excluded=ex)
    assert not s.new.top1[0] and s.new.ap[0] == 0.0


def test_unlabelled_photos_and_unknown_labels_are_never_relevant():
    qc, rc = label_codes(["a", None, "z"], ["a", None, "b"])
    assert (qc[:, None] == rc[None, :]).tolist() == [[True, False, False], [False] * 3, [False] * 3]
    s = score(q(0, 0, 1, 0), q(0, 0, 1, 0), E, E, [None], [None, None, None, None])
    assert not s.new.top1[0] and s.new.ap[0] == 0.0


def test_lost_at_k_flips_and_their_standard_errors_by_hand():
    """Query 0 had its right photo first and now only sixth: lost@5, a negative flip. Query 1
    had it sixth and now first: a positive flip, nothing lost."""
    first = [True] + [False] * 5
    sixth = [False] * 5 + [True]
    s = Summary(relevance_outcomes(np.array([first, sixth])),
                relevance_outcomes(np.array([sixth, first])))
    assert s.lost(5).tolist() == [True, False] and s.nfr().tolist() == [True, False]
    d = s.as_dict()
    assert d["lost_at_5"] == 0.5 and d["lost_at_5_se"] == 0.5  # std([1, 0]) / sqrt(2)
    assert d["nfr"] == 0.5 and d["pfr"] == 0.5 and d["nfr_se"] == 0.5
    assert d["map"] == round((1 + 1 / 6) / 2, 4) and d["delta_map"] == 0.0
    assert d["lost_at_10"] == 0.0


def test_kept_is_the_share_of_old_first_results_kept():
    old = Outcomes(None, None, None, np.array([[0, 1], [2, 3]]))
    new = Outcomes(None, None, None, np.array([[1, 5], [3, 2]]))
    s = Summary(old, new)
    assert not s.labelled and s.kept().tolist() == [0.5, 1.0]
    assert s.as_dict() == {"queries": 2, "retention": 0.75, "retention_se": 0.25}
    # label-free search finds only the first results, in order
    found = search(np.array([[1, 0.5, 0.2, 0]], np.float32), E, keep=2)
    assert found.top1 is None and found.neighbours.tolist() == [[0, 1]]


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n=120, dim=16, classes=6, noise=0.8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = rng.integers(0, classes, n)
    return unit(centres[labels] + noise * rng.normal(size=(n, dim))), labels


def test_evaluate_is_the_leave_one_out_configuration():
    """metrics.evaluate (ml-fct's old/old, new/old, new/new) agrees with a brute-force
    leave-one-out ranking and with `score` on the same photos."""
    x, labels = clustered()
    y = unit(x + 0.5 * np.random.default_rng(1).normal(size=x.shape))
    r = metrics.evaluate(y, x, labels)
    order = metrics.rank_matrix(y, x)
    rel = labels[order] == labels[:, None]
    assert r.top1 == pytest.approx(rel[:, 0].mean()) and r.top5 == pytest.approx(rel[:, :5].any(1).mean())
    assert r.map == pytest.approx(metrics.average_precision(rel).mean())
    s = score(x, y, x, x, labels, labels, own_index=np.arange(len(x)))
    assert s.as_dict()["map"] == round(r.map, 4) and np.array_equal(s.new.top1, r.correct_top1)
    assert s.as_dict()["nfr"] == metrics.flip_rates(metrics.evaluate(x, x, labels).correct_top1,
                                                   r.correct_top1)["nfr"]


def test_compat_signals_albums_are_one_score():
    x, labels = clustered(seed=2)
    lab = [f"c{k}" for k in labels]
    new = unit(x + 0.4 * np.random.default_rng(3).normal(size=x.shape))
    held = np.arange(80, 120)
    sig = metrics.compat_signals(new[held], x[held], x, held, [lab[i] for i in held], lab,
                                 new_reference=new)
    s = score(x[held], new[held], x, x, [lab[i] for i in held], lab, own_index=held)
    albums = sig["albums"]
    assert albums["old/old"] == s.side("old") and albums["new/old"] == s.side("new")
    assert (albums["delta_map"], albums["delta_map_se"]) == s.delta("map")
    assert albums["nfr"] == s.as_dict()["nfr"]
    w = score(x[held], new[held], x, new, [lab[i] for i in held], lab, own_index=held)
    assert albums["new/new"]["map"] == w.side("new")["map"]


def test_path_summary_keeps_its_json_contract():
    x, labels = clustered(seed=4)
    ex = metrics.exclusion_mask(len(x), len(x), np.arange(len(x)))
    o = metrics.outcomes(x, x, list(labels), list(labels), ex)
    assert list(metrics.path_summary(o, o)) == [
        "queries", "top1", "top1_se", "top5", "top5_se", "map", "map_se", "delta_top1",
        "delta_top1_se", "delta_top5", "delta_top5_se", "delta_map", "delta_map_se", "nfr", "pfr",
        "nfr_se", "lost_at_5", "lost_at_5_se", "lost_at_10", "lost_at_10_se", "retention",
        "retention_se"]


def test_one_judge_gate_then_labels():
    gate_ok = {"own_rank": 0.01, "agreement": 0.5}
    bad = judge({"own_rank": 0.5, "agreement": 0.0, **figures(delta_map=0.3)})
    assert bad == Verdict("incompatible", [], bad.reasons) and not bad.passed
    assert len(bad.reasons) == 2 and "limit 30%" in bad.reasons[0]
    assert judge(gate_ok).verdict == "compatible" and judge(gate_ok).passed
    assert judge({}).verdict == "unjudged"
    v = judge({**gate_ok, **figures(delta_map=0.1)})
    assert v.verdict == "better" and v.reasons and v.passed
    assert judge(figures(delta_map=-0.05)).verdict == "worse"
    # the plan's wrapper is the same judge
    from search.ops import plan

    assert plan.judge_path(figures(nfr=0.1)) == (judge(figures(nfr=0.1)).verdict,
                                                 judge(figures(nfr=0.1)).flags)


def test_bridge_limits_floor_kept_old_beyond_its_error_first():
    f = {"kept_old": 0.5, "kept_old_se": 0.05, **figures(retention=0.2, lost_at_5=0.1)}
    plan_flags = judge(f, PLAN).flags
    bridge = judge(f, BRIDGE)
    assert "label-free floor 60%" in bridge.flags[0] and "lost@5" in bridge.flags[1]
    assert not any("erased" in x for x in bridge.flags)  # the labelled retention limit is off
    assert any("erased" in x for x in plan_flags) and not any("floor" in x for x in plan_flags)
    assert judge({"kept_old": 0.58, "kept_old_se": 0.03}, BRIDGE) == Verdict("unjudged")
