"""Moving the gallery too (issue 18): vector-only fits on the gallery's own backbone, gallery
transforms (exact heads and learned maps), the upgrade plan, one verdict, lost@k. Real photos
and models on FAISS and SQLite; a transform on every store, and killed midway, is
tests/test_upgrades_fast.py's and tests/test_kill_stores.py's."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from search.api import Gallery
from search.cli import cli

PLAN_KEYS = {"path", "top1", "top5", "map", "nfr", "lost_at_5", "seconds"}


def run(home, *args):
    return CliRunner().invoke(cli, ["--home", str(home), *map(str, args)], catch_exceptions=False)


def as_json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def album_home(album_gallery) -> Path:
    """A private copy of the session's lite0 gallery of 4 albums x 14 photos (conftest's
    album_gallery)."""
    return album_gallery


def transformed_count(home: Path, model: str) -> int:
    info = as_json(run(home, "info", "--json"))
    return sum(r["transformed"] for r in info["vectors"] if r["model"] == model)


def test_vector_only_fit_decodes_nothing_then_transforms_searches_and_rolls_back(
        album_home, album_photos, monkeypatch):
    import models.imageio

    # modules that bind decode at import are imported now, so none keeps `never` afterwards
    import search.ops.compare  # noqa: F401, E401
    import search.ops.embedjob
    import search.ops.fit
    import search.ops.ingest
    import search.ops.preflight  # noqa: F401, E401
    import search.ops.query

    def never(*a, **k):
        raise AssertionError("a vector-only fit must not decode or embed a photo")

    with monkeypatch.context() as m:  # the backbone never runs, no photo is decoded
        m.setattr(search.ops.fit, "extract", never)
        m.setattr(models.imageio, "decode", never)
        m.setattr("models.embedder.Embedder.embed_batch", never)
        report = as_json(run(album_home, "train", "--from-gallery", "--backbone", "lite0",
                             "--out", "albums-head", "--json"))
    assert report["vector_only"] and report["photos_embedded"] == 0
    assert report["passed"] and report["transform"]["kind"] == "head"
    assert [r["path"] for r in report["plan"]] == ["queries", "transform", "backfill"]
    for row in report["plan"]:
        assert PLAN_KEYS <= set(row) and 0 <= row["lost_at_5"] <= 1
    rows = {r["path"]: r for r in report["plan"]}
    # a head on the stored vectors' own model: the transform moves them to exactly what a
    # backfill would embed, so both paths measure the same
    assert rows["transform"]["map"] == rows["backfill"]["map"]
    # four distinct albums: the old vectors already rank nearly every held-out photo's album
    # first, searching every sampled photo (mAP about 0.998), so no path can gain and the plan
    # recommends the instant, queries-only switch
    assert report["measured"]["old"]["map"] >= 0.99
    assert all(r["verdict"] == "no worse" and not r["flags"] for r in rows.values()), rows
    assert report["recommended"] == "queries" and report["verdict"] == "no worse"
    assert report["plan"][2]["photos_embedded"] == 56 and report["plan"][1]["photos_embedded"] == 0

    up = as_json(run(album_home, "upgrade", "albums-head", "--transform", "--json"))
    assert up["changed"] and up["transform"] and up["space"] == "albums-head"
    assert up["vectors_transformed"] == 56 and up["photos_embedded"] == 0 and up["seconds"] > 0
    assert up["preflight"]["reused"], "the fit's measurement of an unchanged gallery is reused"
    assert transformed_count(album_home, "albums-head") == 56

    # the transformed vectors are exactly what the model embeds for the same photos
    g = Gallery.open(album_home)
    model = g.core.load_model("albums-head")
    ids = [int(i) for i in g.core.catalog.vectors.space_members("albums-head")[:6]]
    rows = g.core.catalog.images.images(ids)
    from models.imageio import decode

    direct = model.embed_images([decode(g.core.store.read(rows[i].sha256, rows[i].ext),
                                        model.info.image_size).image for i in ids])
    moved = g.core.catalog.vectors.serving_vectors_of(ids, "albums-head")
    cos = (direct * np.stack([moved[i] for i in ids])).sum(1)
    assert cos.min() > 0.999, cos
    g.close()

    photo = album_photos / "sunflower" / sorted(p.name for p in (album_photos / "sunflower").iterdir())[0]
    hits = as_json(run(album_home, "search", photo, "-k", "3", "--json"))
    assert hits["model"] == "albums-head" and hits["space"] == "albums-head"
    assert hits["results"][0]["score"] > 0.999 and hits["results"][0]["name"] == photo.name

    back = as_json(run(album_home, "rollback", "--json"))
    assert back["model"] == "lite0" and back["space"] == "lite0" and back["need_reembed"] == 0
    hits = as_json(run(album_home, "search", photo, "-k", "3", "--json"))
    assert hits["model"] == "lite0" and hits["results"][0]["name"] == photo.name


def test_a_vector_only_fit_without_albums_says_there_is_nothing_to_learn(album_home):
    home = album_home
    g = Gallery.open(home)
    g.core.catalog.images.set_album([int(i) for i in g.core.catalog.vectors.space_members("lite0")], None)
    g.close()
    r = run(home, "train", "--from-gallery", "--backbone", "lite0", "--out", "x")
    assert r.exit_code == 1 and "can only learn from albums" in r.output
    assert "graceful albums set" in r.output and "Traceback" not in r.output


def test_lite2_fit_learns_a_map_then_backfill_replaces_the_most_uncertain_first(album_home):
    report = as_json(run(album_home, "train", "--from-gallery", "--backbone", "lite2",
                         "--out", "lite2-fit", "--json"))
    assert not report["vector_only"] and report["photos_embedded"] == 56
    assert report["transform"]["kind"] == "linear" and report["transform"]["pairs"] > 10
    up = as_json(run(album_home, "upgrade", "lite2-fit", "--transform", "--json"))
    assert up["changed"] and up["vectors_transformed"] == 56 and up["photos_embedded"] == 0
    assert transformed_count(album_home, "lite2-fit") == 56

    from conftest import catalog_rows

    unc = dict(catalog_rows(album_home, "SELECT image_id, uncertainty FROM vectors WHERE "
                            "model = ? AND origin = 'map'", ["lite2-fit"]))
    assert len(unc) == 56 and all(u is not None for u in unc.values())
    r = run(album_home, "backfill", "--order", "uncertainty", "--limit", "10", "--json")
    assert r.exit_code == 0, r.output
    replaced = {i for (i,) in catalog_rows(album_home, "SELECT image_id FROM vectors WHERE "
                                           "model = ? AND origin IS NULL", ["lite2-fit"])}
    assert len(replaced) == 10
    assert min(unc[i] for i in replaced) >= max(u for i, u in unc.items() if i not in replaced)
    status = as_json(run(album_home, "backfill", "--status", "--json"))
    assert status["transformed"] == 46
    assert as_json(run(album_home, "backfill", "--json"))["done"] == 46
    assert transformed_count(album_home, "lite2-fit") == 0


def test_the_upgrade_reuses_the_fits_measurement_until_the_gallery_changes(album_home, few_photos):
    home = album_home
    fit = as_json(run(home, "train", "--from-gallery", "--backbone", "lite0", "--out", "h",
                      "--json"))
    dry = as_json(run(home, "upgrade", "h", "--dry-run", "--json"))["preflight"]
    assert dry["reused"] and dry["seconds"] == 0.0 and dry["sample"] == fit["measured"]["queries"]
    queries = next(r for r in fit["plan"] if r["path"] == "queries")
    assert dry["verdict"] == queries["verdict"] and dry["flags"] == queries["flags"]
    # 12 new photos in a new album: more than 10% more, so it is measured again, on at least as
    # many held-out photos as the fit used
    assert run(home, "index", few_photos, "--album", "new").exit_code == 0
    dry = as_json(run(home, "upgrade", "h", "--dry-run", "--json"))["preflight"]
    assert not dry["reused"] and dry["seconds"] > 0 and dry["held_out_only"]


def test_compare_reports_lost_at_k_with_the_losing_queries(album_home, tmp_path, album_photos):
    home = album_home
    assert run(home, "train", "--from-gallery", "--backbone", "lite0", "--out", "h").exit_code == 0
    assert run(home, "upgrade", "h", "--transform").exit_code == 0
    out = tmp_path / "cmp.json"
    r = run(home, "compare", "--queries", album_photos, "-k", "5", "--json", out)
    assert r.exit_code == 0, r.output
    assert "lost@5" in r.output
    report = json.loads(out.read_text())
    s = report["summary"]
    assert set(s["lost_at_k"]) == {"5", "10"} and s["new_space"] == "h"
    rows = report["queries"]
    assert all(isinstance(q["lost_all"], bool) for q in rows)
    assert s["lost_at_k"]["5"] == pytest.approx(np.mean([q["lost_all_at"]["5"] for q in rows]), abs=1e-4)
    for q in rows:  # a right photo in the old top-k and none in the new one: it was lost
        if q["lost_all"]:
            assert q["lost"]


def test_the_mlp_map_corrects_a_nonlinear_bridge_and_survives_a_checkpoint_round_trip():
    """Default tier (the MLP's correction trains with torch): on pairs related by a bent map,
    ridge + MLP beats ridge out of fold, `choose_map` picks it by fidelity, and its tensors
    give back the same map."""
    from models.bridge import choose_map
    from models.transform import LinearMap, fit_linear_map, normalise

    rng = np.random.default_rng(0)
    x = normalise(rng.normal(size=(1500, 16))).astype(np.float32)
    z = x @ np.linalg.qr(rng.normal(size=(16, 16)))[0]
    y = normalise(z + 2 * z ** 2 + 0.02 * rng.normal(size=(1500, 16)))
    choice = choose_map(x, y)
    scores = choice.scores
    assert set(scores) == {"ridge", "procrustes", "mlp"} and choice.kind == "mlp"
    assert scores["mlp"]["oof_cosine"] > scores["ridge"]["oof_cosine"] + 0.05
    mlp = choice.map
    assert mlp.spec["map"] == "mlp" and mlp.mlp is not None
    back = LinearMap.from_tensors(mlp.tensors(), mlp.spec)
    assert np.allclose(back.apply(x[:5]), mlp.apply(x[:5]), atol=1e-5)
    with pytest.raises(ValueError, match="unknown map kind"):
        fit_linear_map(x, y, kind="kernel")
def synthetic_lite0_gallery(home: Path, n: int = 3000, albums: int = 20, seed: int = 0) -> None:
    """A lite0 gallery of n vectors in `albums` clusters (no photo files): enough rows for a
    transform to take a moment, built in a second."""
    from models import registry

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(albums, 1280))
    labels = rng.integers(0, albums, n)
    x = centres[labels] + 1.5 * rng.normal(size=(n, 1280))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    g = Gallery.open(home, create=True)
    model = registry.load("lite0")
    g.core.activate(model, "init")
    with g.core.catalog.transaction():
        ids = [g.core.catalog.images.add_image({"sha256": f"{i:064x}", "name": f"p{i}.jpg", "ext": ".jpg",
                                    "bytes": 1, "width": 1, "height": 1, "format": "JPEG",
                                    "source": f"/p/a{labels[i]}/p{i}.jpg", "added_at": float(i),
                                    "album": f"a{labels[i]}"}) for i in range(n)]
        g.core.write_vectors(ids, x, model)
    g.core.rebuild_index()
    g.close()


def test_choose_map_fits_the_ridge_folds_once_and_chooses_as_before(monkeypatch):
    """Default tier (torch): the MLP kind corrects the ridge candidate's own per-fold maps
    instead of solving each fold's ridge again, with identical results. The kind chosen and
    every score are those `choose_map` gave before the folds were shared (recorded on this
    seeded input), and the out-of-fold predictions equal the old computation's, bit for bit."""
    import functools

    from models import mlp_map
    from models.bridge import choose_map
    from models.transform import FOLDS, _ridge_solutions, normalise

    monkeypatch.setattr(mlp_map, "train_correction",  # fewer steps: seconds, still chosen
                        functools.partial(mlp_map.train_correction, steps=250))
    rng = np.random.default_rng(7)
    x = normalise(rng.normal(size=(420, 12))).astype(np.float32)
    z = x @ np.linalg.qr(rng.normal(size=(12, 12)))[0]
    y = normalise(z + 2 * z ** 2 + 0.02 * rng.normal(size=(420, 12))).astype(np.float32)
    choice = choose_map(x, y, seed=3)
    assert choice.kind == "mlp" and choice.map.spec["lambda"] == 0.01
    assert choice.scores == {"ridge": {"fidelity": 0.6031, "oof_cosine": 0.8312},
                             "procrustes": {"fidelity": 0.605, "oof_cosine": 0.8236},
                             "mlp": {"fidelity": 0.7919, "oof_cosine": 0.9651}}

    # the MLP kind's out-of-fold predictions as they were made before: each fold's ridge
    # solved again for the chosen strength
    y_unit = normalise(y)
    fold_of = np.random.default_rng(3).permutation(len(x)) % FOLDS
    preds = np.zeros_like(y_unit)
    for f in np.unique(fold_of):
        tr, te = fold_of != f, fold_of == f
        mi, mo = x[tr].mean(0), y_unit[tr].mean(0)
        w = _ridge_solutions(x[tr] - mi, y_unit[tr] - mo, [0.01])[0]
        base_tr = ((x[tr] - mi) @ w + mo).astype(np.float32)
        w1, b1, w2, b2 = mlp_map.train_correction(x[tr], base_tr, y_unit[tr], seed=3)
        preds[te] = (((x[te] - mi) @ w + mo).astype(np.float32)
                     + mlp_map.correction(x[te], mi, w1, b1, w2, b2))
    assert np.array_equal(choice.oof, normalise(preds).astype(np.float32))
