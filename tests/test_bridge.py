"""Any model, any gallery (issue 24): a label-free bridge from an album-less lite0 gallery to
plain lite2, every path it plans taken from the CLI (query map, gallery map, fused, the
re-embed) and rolled back; a fused gallery searches, ingests, backfills and leaves fused mode.
Real photos and models, SQLite, FAISS (Milvus in the slow tier)."""
from __future__ import annotations

import json
from pathlib import Path

import cli_fork
import pytest
from click.testing import CliRunner

from search.api import Gallery
from search.cli import cli

ROW_KEYS = {"path", "fidelity", "fidelity_se", "kept_old", "kept_old_se", "photos_embedded",
            "seconds", "verdict", "flags", "command"}


def run(home, *args):
    return CliRunner().invoke(cli, ["--home", str(home), *map(str, args)], catch_exceptions=False)


def as_json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def spaces(home: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in as_json(run(home, "info", "--json"))["vectors"]:
        out[r["space"]] = out.get(r["space"], 0) + r["vectors"]
    return out


@pytest.fixture
def flat_home(album_gallery) -> Path:
    """The session's 56-photo lite0 gallery with its albums cleared: a flat folder."""
    g = Gallery.open(album_gallery)
    g.core.catalog.images.set_album([r[0] for r in g.core.catalog.conn.db.execute("SELECT id FROM images")], None)
    g.close()
    return album_gallery


def test_an_album_less_gallery_bridges_to_lite2_and_takes_every_path(flat_home, few_photos):
    home = flat_home
    r = run(home, "upgrade", "lite2", "--dry-run")
    assert r.exit_code == 1 and "train --from-gallery --backbone lite2" in r.output
    assert "Traceback" not in r.output and "lite2 embeds about 56 of the 56 photos" in r.output

    report = as_json(run(home, "train", "--from-gallery", "--backbone", "lite2", "--out", "br",
                         "--json"))
    assert report["method"] == "bridge" and report["labelled"] is False
    assert report["photos_embedded"] == 56  # a gallery this small is embedded whole
    assert [p["path"] for p in report["plan"]] == ["keep", "queries", "transform", "fused", "backfill"]
    for row in report["plan"]:
        assert ROW_KEYS <= set(row), row
        assert 0 <= row["fidelity"] <= 1 and 0 <= row["kept_old"] <= 1
        assert "top1" not in row  # nothing to judge by without albums
    assert report["recommended"] in {p["path"] for p in report["plan"]}
    rec = next(p for p in report["plan"] if p["path"] == report["recommended"])
    assert report["next_command"] == rec["command"]
    assert "cannot judge" in report["recommendation"]
    assert spaces(home)["lite2"] == 56  # the sample's real lite2 vectors are kept
    checked = run(home, "check")  # their space has no index file until it serves: not a fault
    assert checked.exit_code == 0 and "lite2: 56 vectors in the catalog" in checked.output

    text = run(home, "train", "--from-gallery", "--backbone", "lite2", "--out", "br2")
    assert text.exit_code == 0 and "next: graceful " in text.output and "fidelity" in text.output

    # follow next_command, as a user would
    if report["next_command"]:
        up = as_json(run(home, *report["next_command"], "--json"))
        assert up["changed"] and up["mode"] in ("native", "queries", "fused")
        assert run(home, "rollback").exit_code == 0

    # fused: both generations searched together
    up = as_json(run(home, "upgrade", "br", "--mode", "fused", "--weight", "0.5", "--json"))
    assert up["changed"] and up["mode"] == "fused" and up["photos_embedded"] == 56
    serving = as_json(run(home, "info", "--json"))["serving"]
    assert serving["mode"] == "fused" and serving["spaces"] == ["lite0", "lite2"]
    assert serving["weights"] == [0.5, 0.5] and serving["index_bytes"] > 0
    g = Gallery.open(home)
    photo = g.photos.list(0, 1)[0]
    hit = g.search(g.core.image_path(photo), k=1).hits[0]
    assert hit.image_id == photo.id and hit.score == pytest.approx(1.0, abs=1e-3)
    g.close()
    # new photos go into the fused space and into both generations' own spaces
    assert run(home, "index", few_photos).exit_code == 0
    s = spaces(home)
    fused = next(k for k in s if k.startswith("fused:"))
    assert s[fused] == s["lite0"] == s["lite2"] == 68
    assert run(home, "backfill", "--limit", "5").exit_code == 0
    # what the plan predicted for the fused path, next to what real searches measure
    r = run(home, "compare", "--queries", few_photos, "--old", "lite0", "--json", home / "c.json")
    assert r.exit_code == 0 and "plan for the fused path" in r.output, r.output
    check = json.loads((home / "c.json").read_text())["summary"]["plan_check"]
    assert check["bridge"] == "br" and check["path"] == "fused" and check["weight"] == 0.5
    kept = check["checks"]["kept_old"]
    assert 0 <= kept["measured"] <= 1 and kept["off_by_se"] >= 0
    rb = as_json(run(home, "rollback", "--json"))
    assert rb["model"] == "lite0" and rb["need_reembed"] == 0
    assert as_json(run(home, "info", "--json"))["serving"]["mode"] == "native"

    # the gallery map: the stored vectors moved into lite2's space, lite2 serving natively
    up = as_json(run(home, "upgrade", "br", "--mode", "native", "--json"))
    assert up["mode"] == "native" and up["model"] == "lite2" and up["space"] == "lite2"
    assert as_json(run(home, "info", "--json"))["serving"]["spaces"] == ["lite2"]
    assert run(home, "rollback").exit_code == 0
    # lite2's space is now complete: a plain upgrade to lite2 switches natively at once
    up = as_json(run(home, "upgrade", "lite2", "--json"))
    assert up["mode"] == "native" and up["switch_ms"] < 1000
    assert run(home, "rollback").exit_code == 0

    # the query map: lite2's queries mapped into lite0's space, nothing moved
    up = as_json(run(home, "upgrade", "br", "--json"))
    assert up["mode"] == "queries" and up["space"] == "lite0" and up["vectors_transformed"] == 0
    # the next fit on this gallery says how far off the earlier plan was
    again = as_json(run(home, "train", "--from-gallery", "--backbone", "lite2", "--out", "br3",
                        "--json", "--method", "bridge"))
    assert any(e["bridge"] == "br" and e["path"] == "fused" for e in again["earlier_predictions"])


def test_fused_mode_needs_a_bridge_and_a_sane_weight(flat_home):
    r = run(flat_home, "upgrade", "lite0", "--mode", "fused")
    assert r.exit_code == 1 and "fit a bridge" in r.output
    assert run(flat_home, "train", "--from-gallery", "--backbone", "lite1", "--out", "b1",
               "--sample", "40").exit_code == 0
    r = run(flat_home, "upgrade", "b1", "--mode", "fused", "--weight", "1.5")
    assert r.exit_code == 1 and "between 0 and 1" in r.output
    assert as_json(run(flat_home, "info", "--json"))["active_model"] == "lite0"
    # Ray workers get both generations' models: the bridge checkpoint travels with the name
    from models.bridge import fused_name
    from models.ray_embed import ModelPackage

    package = ModelPackage.of(fused_name("lite0", "b1", 0.5), [flat_home / "models"])
    assert package.name == "fused:lite0+b1@0.50" and set(package.files) == {"b1.safetensors"}
    # `upgrade lite2` with no bridge to lite2: it fits one, then takes the path it recommends
    up = as_json(run(flat_home, "upgrade", "lite2", "--json"))
    assert up["changed"] and up["mode"] in ("native", "queries", "fused")
    assert any("fitted lite2-bridge first" in n for n in up["notes"])
    assert (flat_home / "models" / "lite2-bridge.safetensors").is_file()


@pytest.mark.slow
def test_kill_9_during_the_bridge_sample_and_the_fused_transform_then_resume(
        flat_home, tmp_path, run_and_kill, cold_features):
    """A bridge fit killed while lite2 embeds its sample keeps the finished feature shards and
    the rerun completes; a fused transform killed half way keeps serving the old model, and the
    rerun moves only what is left, then switches."""
    import os
    import shutil
    import sqlite3
    import sys

    from test_transform import synthetic_lite0_gallery

    env = {**os.environ, "GRACEFUL_HOME": str(flat_home)}
    shards = flat_home / "cache" / "lite2"
    code = run_and_kill([sys.executable, "-m", "search.cli", "train", "--from-gallery",
                         "--backbone", "lite2", "--out", "br"], env,
                        lambda: shards.is_dir() and any(shards.glob("*.npz")))
    assert code == -9, "the kill must land while lite2 embeds the sample"
    kept = {p.name for p in shards.glob("*.npz")}
    assert kept and not (flat_home / "models" / "br.safetensors").exists()
    report = as_json(run(flat_home, "train", "--from-gallery", "--backbone", "lite2", "--out",
                         "br", "--json"))
    assert report["photos_embedded"] == 56 and kept <= {p.name for p in shards.glob("*.npz")}

    # the fused transform, on a gallery large enough for a kill to land inside it
    home = tmp_path / "big"
    synthetic_lite0_gallery(home, n=3000)
    (home / "models").mkdir(exist_ok=True)
    shutil.copy(flat_home / "models" / "br.safetensors", home / "models" / "br.safetensors")
    env = {**os.environ, "GRACEFUL_HOME": str(home), "GRACEFUL_TRANSFORM_BATCH": "25"}

    def moved() -> int:
        with sqlite3.connect(f"file:{home / 'catalog.db'}?mode=ro", uri=True, timeout=0.1) as db:
            return db.execute("SELECT count(*) FROM vectors WHERE space LIKE 'fused:%'").fetchone()[0]

    code = run_and_kill([sys.executable, "-m", "search.cli", "upgrade", "br", "--mode", "fused",
                         "--weight", "0.5"], env, lambda: moved() > 100)
    assert code == -9, "the kill must land inside the fused transform"
    part = moved()
    assert 100 <= part < 3000
    with sqlite3.connect(home / "catalog.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        active = json.loads(db.execute("SELECT value FROM state WHERE key = 'active_model'").fetchone()[0])
    assert active == "lite0", "search keeps the old model until the fused space is complete"
    env.pop("GRACEFUL_TRANSFORM_BATCH")
    r = cli_fork.run(["upgrade", "br", "--mode", "fused", "--weight", "0.5", "--json"], env=env,
                     timeout=300)
    assert r.returncode == 0, r.stderr
    up = json.loads(r.stdout)
    assert up["changed"] and up["mode"] == "fused" and up["vectors_transformed"] == 3000 - part
    g = Gallery.open(home)
    assert g.models.serving()["mode"] == "fused" and g.core.index().ntotal == 3000
    g.close()
