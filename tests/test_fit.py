"""Albums and upgrades fitted to the gallery itself (`graceful train --from-gallery`), on real
photos and real models: labelled and unlabelled paths, held-out report, refusals, kill -9."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import cli_fork
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ALBUM_CLASSES

from search.api import FitReport, Gallery
from search.cli import cli
from search.ops.fit import FitRefused, FitRequest, fit_upgrade
from search.ops.fit_sample import FitError, stratified
from search.storage.catalog import SCHEMA_VERSION, Catalog, Db, _migrate_to_1


def run(home, *args):
    return CliRunner().invoke(cli, ["--home", str(home), *map(str, args)], catch_exceptions=False)


@pytest.fixture
def gallery_copy(album_gallery) -> Path:
    """A private copy of the session's lite0 gallery of album_photos (conftest)."""
    return album_gallery


def test_albums_follow_folders_and_can_be_edited(gallery_copy, few_photos):
    r = run(gallery_copy, "albums", "--json")
    assert r.exit_code == 0, r.output
    assert {a["album"]: a["images"] for a in json.loads(r.stdout)} == {c: 14 for c in ALBUM_CLASSES}
    # --album puts new photos (and photos already there) into the named album
    r = run(gallery_copy, "index", few_photos / "airplanes", "--album", "trips", "--json")
    assert r.exit_code == 0, r.output
    albums = {a["album"]: a["images"] for a in json.loads(run(gallery_copy, "albums", "--json").stdout)}
    assert albums["trips"] == 4
    r = run(gallery_copy, "albums", "rename", "trips", "holidays")
    assert r.exit_code == 0 and "(4 photos)" in r.output
    g = Gallery.open(gallery_copy)
    some = [row.id for row in g.core.catalog.images.list_images(0, 3, album="holidays")]
    g.close()
    assert run(gallery_copy, "albums", "set", "best", *some).exit_code == 0
    assert run(gallery_copy, "albums", "clear", some[0]).exit_code == 0
    albums = {a["album"]: a["images"] for a in json.loads(run(gallery_copy, "albums", "--json").stdout)}
    assert albums["best"] == 2 and albums["holidays"] == 1 and albums[None] == 1
    r = run(gallery_copy, "albums", "rename", "no-such-album", "x")
    assert r.exit_code == 1 and "no album called" in r.output


def test_v1_catalog_gets_albums_from_its_folders(tmp_path):
    import sqlite_utils

    path = tmp_path / "catalog.db"
    db = sqlite_utils.Database(path)
    _migrate_to_1(db)
    db.execute("PRAGMA user_version = 1")
    db["images"].insert({"sha256": "ab" * 32, "name": "a.jpg", "ext": ".jpg", "bytes": 1, "width": 1,
                         "height": 1, "format": "JPEG", "source": "/photos/cats/a.jpg", "added_at": 0.0})
    db.conn.commit()
    db.close()
    c = Catalog(Db(path))
    assert c.schema_version == SCHEMA_VERSION and c.images.albums() == [{"album": "cats", "images": 1}]
    assert c.images.list_images()[0].album == "cats"


def test_stratified_sample_keeps_every_album():
    labels = {i: ("big" if i < 90 else f"small{i}") for i in range(100)}
    pick = stratified(list(range(100)), labels, 20, np.random.default_rng(0))
    assert len(pick) == len(set(pick)) == 20
    assert {labels[i] for i in pick} == set(labels.values())  # all 11 albums present


def test_fit_with_albums_from_the_cli_then_upgrade(gallery_copy):
    r = run(gallery_copy, "train", "--from-gallery", "--backbone", "lite2", "--out", "fitted",
            "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["method"] == "pct" and report["sample"]["labelled"] and report["sample"]["albums"] == 4
    assert report["sample"]["train"] + report["sample"]["held_out"] == 56
    held = report["held_out"]
    for pair in ("old/old", "new/old", "new/new"):
        assert {"top1", "map"} <= set(held["albums"][pair])
    assert {"nfr", "pfr", "own_rank", "agreement", "mean_cosine"} <= set(held) | set(held["albums"])
    assert report["passed"] and Path(report["path"]).is_file() and Path(report["report"]).is_file()
    saved = json.loads(Path(report["report"]).read_text())  # the typed report's JSON: key for key
    assert list(report) == list(saved) and report == saved

    # the report lives in the checkpoint too
    models = {m["name"]: m for m in json.loads(run(gallery_copy, "models", "--json").stdout)}
    assert models["fitted"]["space"] == "lite0" and models["fitted"]["method"] == "pct"

    r = run(gallery_copy, "upgrade", "fitted", "--json")
    assert r.exit_code == 0, r.output
    up = json.loads(r.stdout)
    assert up["changed"] and up["preflight"]["passed"] and up["preflight"]["held_out_only"]
    assert up["preflight"]["albums"]["queries"] >= 2 and up["preflight"]["expectation"]

    # name taken
    r = run(gallery_copy, "train", "--from-gallery", "--backbone", "lite2", "--out", "fitted")
    assert r.exit_code == 1 and "already exists" in r.output


def test_fit_without_albums_takes_the_unlabelled_path(gallery_copy):
    g = Gallery.open(gallery_copy)
    g.core.catalog.images.set_album([r[0] for r in g.core.catalog.conn.db.execute("SELECT id FROM images")], None)
    with pytest.raises(FitError, match="at least two albums"):
        fit_upgrade(g.core, FitRequest("lite2", "needs-albums", method="bct"))
    report = fit_upgrade(g.core, FitRequest("lite2", "adapted"))
    assert report["method"] == "adapter" and not report["sample"]["labelled"]
    # without albums nothing says whether search gets better: the verdict is the compatibility
    # gate's, and an incompatible model would have been refused (FitRefused), not returned
    assert "albums" not in report["held_out"] and report["passed"]
    assert report["verdict"] == "compatible" and "without albums" in report["expectation"]
    g.close()


def test_a_model_worse_on_the_held_out_slice_is_refused(gallery_copy, monkeypatch):
    """Sabotaged training (the old side shuffled between photos) must be caught by the held-out
    measurement: nothing saved, the message says what was measured; --force saves it."""
    import models.training as training

    real = training.train_head

    def sabotaged(cfg, features, labels, n_classes, old_emb=None, old_classifier=None, progress=False):
        rng = np.random.default_rng(0)
        return real(cfg, features, None, n_classes, old_emb=old_emb[rng.permutation(len(old_emb))],
                    progress=progress)

    monkeypatch.setattr(training, "train_head", sabotaged)
    g = Gallery.open(gallery_copy)
    with pytest.raises(FitRefused) as e:
        fit_upgrade(g.core, FitRequest("lite2", "broken", method="adapter"))
    assert "was not saved" in str(e.value) and "held-out" in str(e.value)
    assert not e.value.report["passed"] and e.value.report["path"] is None
    assert not (g.core.models_dir / "broken.safetensors").exists()
    report = fit_upgrade(g.core, FitRequest("lite2", "broken", method="adapter", force=True))
    assert report["forced"] and Path(report["path"]).is_file()
    g.close()


def test_tiny_galleries_get_a_clear_message(home, few_photos, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.jpg").write_bytes(next(few_photos.rglob("*.jpg")).read_bytes())
    run(home, "index", one)
    r = run(home, "train", "--from-gallery", "--backbone", "lite2", "--out", "x")
    assert r.exit_code == 1 and "this gallery has 1 photo;" in r.output and "Traceback" not in r.output


def test_one_album_gets_a_clear_message(gallery_copy):
    g = Gallery.open(gallery_copy)
    ids = [r[0] for r in g.core.catalog.conn.db.execute("SELECT id FROM images")]
    g.core.catalog.images.set_album(ids, "everything")
    with pytest.raises(FitError, match=r"this gallery has: everything \(56\)"):
        fit_upgrade(g.core, FitRequest("lite2", "one-album", method="pct"))
    g.close()


def _feature_shards(home: Path) -> int:
    return len(list((home / "cache" / "lite2").glob("*.npz")))


@pytest.mark.slow
def test_kill_9_during_feature_extraction_resumes(gallery_copy, cold_features):
    env = {**os.environ, "GRACEFUL_HOME": str(gallery_copy)}
    proc = cli_fork.start(["train", "--from-gallery", "--backbone", "lite2", "--out", "resumed"],
                          env)
    deadline = time.time() + 180
    while proc.poll() is None and time.time() < deadline and _feature_shards(gallery_copy) < 1:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    kept = _feature_shards(gallery_copy)
    assert 1 <= kept < 56 // 16 + 1
    assert not (gallery_copy / "models" / "resumed.safetensors").exists()
    with sqlite3.connect(gallery_copy / "catalog.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    from models.features import FeatureCache

    done_before = len(FeatureCache(gallery_copy / "cache", "lite2")._load())
    seen: list[int] = []
    g = Gallery.open(gallery_copy)
    report = fit_upgrade(g.core, FitRequest("lite2", "resumed",
                                       on_progress=lambda p: seen.append(p.done) if p.stage == "features" else None))
    g.close()
    assert report["passed"] and done_before >= 16
    assert seen[0] >= done_before  # the first progress report already counts the cached images


def test_refused_upgrade_offers_the_fitted_path(gallery_copy, make_checkpoint):
    """A model that does not line up with the stored vectors: refused (exit 1, JSON says what
    was measured), nothing switched, and the next step names the fitted path with its time."""
    make_checkpoint(gallery_copy / "models" / "x.safetensors", backbone="lite1", dim=1280,
                    name="not-aligned")
    r = run(gallery_copy, "upgrade", "not-aligned", "--json")
    assert r.exit_code == 1
    out = json.loads(r.stdout[: r.stdout.rindex("}") + 1])
    p = out["preflight"]
    assert not out["changed"] and not p["passed"] and p["verdict"] == "incompatible"
    assert p["own_rank"] > 0.3 and p["albums"]["delta_map"] < 0
    step = out["next_step"]
    assert "graceful train --from-gallery --backbone lite1" in step["command"]
    assert 0 < step["fit_seconds"] and 0 < step["backfill_seconds"]
    r = run(gallery_copy, "upgrade", "not-aligned")
    assert r.exit_code == 1 and "Next step:" in r.output and "Traceback" not in r.output
    assert "graceful train --from-gallery --backbone lite1" in r.output
    assert "graceful reembed lite1" in r.output  # 56 photos: re-embedding is as quick
    info = json.loads(run(gallery_copy, "info", "--json").stdout)
    assert info["active_model"] == "lite0" and info["albums"] == 4


def test_the_album_path_offers_the_head_and_the_old_query_together(gallery_copy):
    """With albums the plan has a blend path (the head's query and the old query over the
    stored vectors, the weight chosen on training photos), measured with every sampled photo
    as the gallery; `next_command` takes the recommended path; --mode fused serves the blend."""
    report = json.loads(run(gallery_copy, "train", "--from-gallery", "--backbone", "lite2",
                            "--out", "fitted", "--json").stdout)
    paths = {r["path"]: r for r in report["plan"]}
    assert set(paths) == {"queries", "blend", "transform", "backfill"}
    qb = report["query_blend"]
    assert qb["chosen"] in [t["weight"] for t in qb["tried"]] and 0 < qb["photos"] < report["sample"]["train"]
    assert report["measured"]["reference"] == report["sample"]["train"] + report["sample"]["held_out"]
    if report["recommended"]:
        assert report["next_command"][:2] == ["upgrade", "fitted"]
    up = json.loads(run(gallery_copy, "upgrade", "fitted", "--mode", "fused", "--json").stdout)
    assert up["changed"] and up["mode"] == "fused" and up["space"] == "lite0"
    assert up["model"] == f"blend:lite0+fitted@{qb['chosen']:.2f}"
    assert up["preflight"]["held_out_only"]  # photos the head trained on do not judge the blend
    serving = json.loads(run(gallery_copy, "info", "--json").stdout)["serving"]
    assert serving["mode"] == "fused" and serving["models"] == ["lite0", "fitted"]
    r = run(gallery_copy, "search", "--id", "1", "-k", "3", "--json")
    assert r.exit_code == 0 and len(json.loads(r.stdout)["results"]) == 3
    assert run(gallery_copy, "rollback").exit_code == 0


def test_a_fit_killed_before_its_report_was_rewritten_still_names_its_model(home):
    """Issue 25: the report is written before the model and rewritten after; a kill between the
    two left `path: null` for a model that exists."""
    import time

    g = Gallery.open(home, create=True)
    g.core.save_report("fit", "x", {"name": "x", "path": None, "created_at": time.time() - 1})
    report = g.reports.fit()
    assert isinstance(report, FitReport) and report.name == "x"
    assert report.path is None  # no model saved: it stays null
    (home / "models").mkdir(exist_ok=True)
    (home / "models" / "x.safetensors").write_bytes(b"saved")
    assert g.reports.fit().path == str(home / "models" / "x.safetensors")
    g.close()
