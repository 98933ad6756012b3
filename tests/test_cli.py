"""The `graceful` command line: JSON contracts that outside checks rely on."""
from __future__ import annotations

import json

from click.testing import CliRunner

from search.cli import cli


def run(home, *args):
    r = CliRunner().invoke(cli, ["--home", str(home), *map(str, args)], catch_exceptions=False)
    return r


def test_index_search_info_models_json(home, few_photos):
    r = run(home, "index", few_photos, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["added"] == 12 and report["skipped"] == 0 and report["model"] == "lite0"
    assert {"seen", "duplicates", "seconds", "images_per_second", "skipped_files"} <= set(report)

    query = sorted((few_photos / "Motorbikes").iterdir())[0]
    r = run(home, "search", query, "-k", "3", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["model"] == "lite0" and out["space"] == "lite0" and out["k"] == 3
    assert [h["rank"] for h in out["results"]] == [1, 2, 3]
    top = out["results"][0]
    assert top["name"] == query.name and top["score"] > 0.999
    assert set(top) == {"rank", "image_id", "sha256", "name", "path", "score", "embedded_by"}

    r = run(home, "search", "--id", top["image_id"], "-k", "2", "--json")
    assert all(h["image_id"] != top["image_id"] for h in json.loads(r.stdout)["results"])

    info = json.loads(run(home, "info", "--json").stdout)
    assert info["images"] == 12 and info["active_model"] == "lite0" and info["space"] == "lite0"
    assert info["index"] == {"space": "lite0", "vectors": 12, "dim": 1280}
    assert info["vectors"] == [{"space": "lite0", "model": "lite0", "vectors": 12, "transformed": 0,
                               "embedded": 12}]
    assert info["vector_store"]["kind"] == "faiss"
    assert info["runtimes"] == {"lite0": ["onnxruntime"]}  # the gallery records the fast path

    models = json.loads(run(home, "models", "--json").stdout)
    assert {"lite0", "lite1", "lite2"} <= {m["name"] for m in models}

    r = run(home, "reindex", "--kind", "auto")
    assert r.exit_code == 0 and "(flat, setting auto) with 12 vectors" in r.output
    assert json.loads(run(home, "info", "--json").stdout)["index_kind"] == {"setting": "auto", "built": "flat"}

    text = run(home, "search", "--text", "a motorbike")
    assert text.exit_code != 0 and "no text tower" in text.output


def test_errors_are_one_clear_line(home, few_photos, tmp_path):
    r = run(home, "info")
    assert r.exit_code == 1 and "no gallery at" in r.output and "Traceback" not in r.output
    run(home, "index", few_photos / "airplanes")
    bad = tmp_path / "x.jpg"
    bad.write_text("not an image")
    r = run(home, "search", bad)
    assert r.exit_code == 1 and "cannot search with this file" in r.output
    r = run(home, "search", tmp_path / "missing.jpg")
    assert r.exit_code == 1 and "no such image file" in r.output


def test_text_search_with_an_open_clip_gallery(home, few_photos, tmp_path):
    """A gallery indexed by an open_clip model (offline: random weights from a local file)
    searches by text through the same CLI."""
    import open_clip
    import torch

    torch.manual_seed(0)
    model, _, _ = open_clip.create_model_and_transforms("ViT-S-32", pretrained=None)
    weights = tmp_path / "vit-s-32.pt"
    torch.save(model.state_dict(), weights)
    name = f"openclip:ViT-S-32:{weights}"
    r = run(home, "index", few_photos, "--model", name, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["model"] == name
    out = json.loads(run(home, "search", "--text", "a sunflower", "-k", "4", "--json").stdout)
    assert out["model"] == name and len(out["results"]) == 4
    assert out["space"].startswith("openclip:ViT-S-32:file-")


def test_compare_json_prints_the_report_and_out_writes_it(album_gallery, few_photos, tmp_path):
    """`compare --json` prints the report on stdout (as every command's --json does), `--out FILE`
    writes it next to the text, and the older `--json FILE` still writes FILE."""
    base = ["compare", "--queries", few_photos, "--old", "lite0", "--new", "lite0", "-k", "5"]
    r = run(album_gallery, *base, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    summary = report["summary"]
    assert summary["k"] == 5 and summary["queries"] == 12 and summary["labelled"]
    assert {"query", "label", "old", "new", "gained", "lost", "overlap", "old_correct",
            "new_correct", "lost_all", "lost_all_at"} <= set(report["queries"][0])
    for args, path in ((["--out", tmp_path / "new.json"], tmp_path / "new.json"),
                       (["--json", tmp_path / "old.json"], tmp_path / "old.json")):
        r = run(album_gallery, *base, *args)
        assert r.exit_code == 0, r.output
        assert r.stdout.startswith("12 queries, lite0 vs lite0, top-5") and "report: " in r.stdout
        written = json.loads(path.read_text())
        assert written["queries"] == report["queries"]
        assert {k: v for k, v in written["summary"].items() if k != "seconds"} == \
            {k: v for k, v in summary.items() if k != "seconds"}
