"""Label-free bridges, pure numpy (fast tier): the maps, their choice, fused scores, the plan of
every path and its recommendation, on synthetic vectors."""
from __future__ import annotations

import numpy as np
import pytest

from models.bridge import choose_map, fuse, fused_name, map_fidelity, parse_fused, split
from models.transform import fit_linear_map, normalise

pytestmark = pytest.mark.fast


def pairs(n=300, d=32, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    x = normalise(rng.normal(size=(n, d)))
    rotation = np.linalg.qr(rng.normal(size=(d, d)))[0]
    y = normalise(x @ rotation + noise * rng.normal(size=(n, d)))
    return x.astype(np.float32), y.astype(np.float32), rotation


def test_procrustes_recovers_a_rotation_and_ridge_a_linear_map():
    x, y, rotation = pairs()
    m, oof = fit_linear_map(x, y, kind="procrustes")
    assert np.abs(m.weight - rotation).max() < 0.1
    assert m.spec["map"] == "procrustes" and m.spec["oof_cosine"] > 0.95
    ridge, _ = fit_linear_map(x, y, kind="ridge")
    assert (ridge.apply(x) * y).sum(1).mean() > 0.95
    with pytest.raises(ValueError, match="unknown map kind"):
        fit_linear_map(x, y, kind="kernel")


def test_choose_map_keeps_the_kind_with_the_best_out_of_fold_fidelity():
    x, y, _ = pairs(n=60, d=48, noise=0.02)  # few pairs, many dimensions: Procrustes wins
    choice = choose_map(x, y)
    scores = choice.scores
    assert choice.kind == max(scores, key=lambda k: scores[k]["fidelity"])
    assert choice.kind == "procrustes"
    assert choice.map.spec["chosen_by"]["scores"] == scores
    assert 0.0 <= map_fidelity(y, y, choice.oof) <= 1.0
    q = choose_map(y, x, side="query")
    assert set(q.scores) == {"ridge", "procrustes"}  # 60 pairs: no MLP tried either side


def test_fused_inner_product_is_the_weighted_sum_of_both_cosines():
    rng = np.random.default_rng(1)
    a, b = normalise(rng.normal(size=(5, 8))), normalise(rng.normal(size=(5, 6)))
    c, d = normalise(rng.normal(size=(7, 8))), normalise(rng.normal(size=(7, 6)))
    w = 0.3
    fq, fg = fuse(a, b, w), fuse(c, d, w)
    assert np.allclose(np.linalg.norm(fq, axis=1), 1.0, atol=1e-5)
    assert np.allclose(fq @ fg.T, w * a @ c.T + (1 - w) * b @ d.T, atol=1e-5)
    old, new = split(fq, 8, w)
    assert np.allclose(old, a, atol=1e-5) and np.allclose(new, b, atol=1e-5)


def test_fused_names_round_trip_and_bad_ones_are_refused():
    name = fused_name("lite0", "lite2-bridge", 0.4)
    assert name == "fused:lite0+lite2-bridge@0.40"
    assert parse_fused(name) == ("lite0", "lite2-bridge", 0.4)
    for bad in ("fused:lite0", "fused:lite0+b@1.5", "lite0+b@0.5", "fused:+b@0.5"):
        with pytest.raises(ValueError):
            parse_fused(bad)


def synthetic_bridge(labelled: bool, n_ref=400, n_emb=150, n_train=120, d=24, seed=0):
    """Old and new spaces of clustered photos; the new space a noisy rotation of the old one."""
    from search.ops.bridge_plan import BridgeData

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, d))
    lab = rng.integers(0, 12, n_ref)
    old = normalise(centres[lab] + 0.8 * rng.normal(size=(n_ref, d))).astype(np.float32)
    rotation = np.linalg.qr(rng.normal(size=(d, d)))[0]
    new_all = normalise(old @ rotation + 0.2 * rng.normal(size=(n_ref, d))).astype(np.float32)
    gmap, oof = fit_linear_map(old[:n_train], new_all[:n_train])
    qmap, _ = fit_linear_map(new_all[:n_train], old[:n_train])
    return BridgeData(old, new_all[:n_emb], n_train, gmap.apply(old[n_emb:]), oof,
                      gmap.apply(old[n_train:n_emb]), qmap.apply(new_all[n_train:n_emb]),
                      [f"a{v}" for v in lab] if labelled else None)


@pytest.mark.parametrize("labelled", [False, True])
def test_the_plan_measures_every_path_against_the_whole_gallery(labelled):
    from search.ops import bridge_plan

    data = synthetic_bridge(labelled)
    m = bridge_plan.measure(data)
    assert m["queries"] == 30 and m["reference"] == 400 and m["labelled"] is labelled
    paths = m["paths"]
    assert paths["keep"]["kept_old"] == 1.0 and paths["backfill"]["fidelity"] == 1.0
    assert paths["backfill"]["reference"] == "sample" and paths["fused@0.50"]["reference"] == "gallery"
    # more weight on the old space keeps more of the old first results
    kept = [paths[f"fused@{w:.2f}"]["kept_old"] for w in bridge_plan.FUSED_WEIGHTS]
    assert kept[-1] > kept[0]
    for row in paths.values():
        assert 0 <= row["fidelity"] <= 1 and row["fidelity_se"] >= 0 and row["kept_old_se"] >= 0
        assert ("labels" in row) is labelled
    w = bridge_plan.choose_weight(m)
    assert w in bridge_plan.FUSED_WEIGHTS
    costs = {p: {"photos_embedded": 150 if p != "backfill" else 400, "seconds": 1.0}
             for p in bridge_plan.BRIDGE_PATHS}
    costs["keep"] = {"photos_embedded": 0, "seconds": 0.0}
    rows = bridge_plan.plan_rows(m, w, costs, {"fused": ["upgrade", "b", "--mode", "fused"]})
    assert [r["path"] for r in rows] == list(bridge_plan.BRIDGE_PATHS)
    for r in rows:
        assert {"fidelity", "fidelity_se", "kept_old", "kept_old_se", "photos_embedded",
                "verdict", "flags", "command"} <= set(r)
        if labelled:
            assert {"top1", "top5", "map", "nfr", "lost_at_5", "lost_at_10"} <= set(r)
    path, why = bridge_plan.recommend(rows, labelled)
    assert path in bridge_plan.BRIDGE_PATHS and why
    if not labelled:
        assert "cannot judge" in why


def test_recommendation_keeps_the_old_model_when_every_path_is_flagged():
    from search.ops import bridge_plan

    rows = [{"path": p, "flags": ["keeps 10%"] if p != "keep" else [], "verdict": "unjudged",
             "fidelity": 0.5, "kept_old": 0.1, "photos_embedded": 1, "seconds": 0.0,
             "se": {"fidelity": 0.01, "kept_old": 0.01}} for p in bridge_plan.BRIDGE_PATHS]
    path, why = bridge_plan.recommend(rows, labelled=False)
    assert path == "keep" and why.startswith("Keep the current model")


def test_albums_that_leave_no_right_answer_are_judged_label_free():
    """Stored vectors that already collapse each album (a head's): every album mate is a near
    duplicate by the old model, so no held-out photo can be judged by albums; the plan says so
    instead of showing zeros."""
    from search.ops import bridge_plan

    data = synthetic_bridge(True)
    labels = data.labels
    centres = {lab: normalise(np.random.default_rng(hash(lab) % 2**32).normal(size=24))
               for lab in set(labels)}
    data.old_ref = np.stack([centres[lab] for lab in labels]).astype(np.float32)
    m = bridge_plan.measure(data)
    assert m["labelled"] is False and m["judged_by_albums"] == 0 and m["albums_unusable"]
    assert all("labels" not in row for row in m["paths"].values())
