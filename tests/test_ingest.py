"""Ingest on real photos: idempotence, bad input, clear refusals, crash safety, retrieval."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from search.api import Gallery, GalleryError
from search.ops.ingest import ingest
from search.ops.query import search_file, search_gallery_image
from search.storage.faiss_index import SpaceIndex


def test_ingest_is_idempotent_and_counts_duplicates(home, few_photos, tmp_path):
    g = Gallery.open(home, create=True)
    first = ingest(g.core, [few_photos])
    assert first.added == 12 and first.duplicates == 0 and not first.skipped
    again = ingest(g.core, [few_photos])
    assert again.added == 0 and again.duplicates == 12
    copy = tmp_path / "copy.jpg"  # same bytes under another name: a duplicate, not a new photo
    shutil.copy(next((few_photos / "airplanes").iterdir()), copy)
    dup = ingest(g.core, [copy, copy])
    assert dup.added == 0 and dup.duplicates == 2
    assert g.core.catalog.images.count_images() == 12
    assert g.core.index().ntotal == 12
    stored = list((home / "images").rglob("*.jpg"))
    assert len(stored) == 12  # content-addressed: one file per unique image


def test_photos_another_writer_added_meanwhile_are_not_counted_twice(home, few_photos):
    """Two `index` runs over the same photos (issue 25): the photos the other run committed
    between this run's read and its commit count as duplicates here, so `added` sums to the
    photos in the gallery."""
    g = Gallery.open(home, create=True)
    ingest(g.core, [few_photos / "airplanes"])  # the gallery exists, with its model
    other = Gallery.open(home)
    raced: list = []

    def meanwhile(_progress):
        if not raced:  # after the first photo is read, before this run's commit
            raced.append(ingest(other.core, [few_photos]))

    mine = ingest(g.core, [few_photos], on_progress=meanwhile)
    assert raced[0].added == 8 and mine.added == 0
    assert mine.duplicates == 12 and g.core.catalog.images.count_images() == 12
    other.close()
    g.close()


def test_bad_inputs_are_reported_and_nothing_written(home, few_photos, tmp_path, bomb_png):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    good = next((few_photos / "sunflower").iterdir()).read_bytes()
    (bad / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (bad / "notes.txt").write_text("not a photo")
    (bad / "bomb.png").write_bytes(bomb_png(30000, 30000))
    (bad / "drawing.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    g = Gallery.open(home, create=True)
    report = ingest(g.core, [bad])
    assert report.added == 0
    reasons = dict((Path(p).name, r) for p, r in report.skipped)
    assert set(reasons) == {"empty.jpg", "truncated.jpg", "notes.txt", "bomb.png", "drawing.svg"}
    assert "empty" in reasons["empty.jpg"] and "damaged" in reasons["truncated.jpg"]
    assert "bomb" in reasons["bomb.png"] or "too large" in reasons["bomb.png"]
    assert g.core.catalog.images.count_images() == 0
    assert not [f for f in (home / "images").rglob("*") if f.is_file()]  # no photo stored


def test_missing_path_or_unknown_model_writes_nothing(home, few_photos):
    from click.testing import CliRunner

    from search.cli import cli

    runner = CliRunner()
    r = runner.invoke(cli, ["--home", str(home), "index", str(few_photos / "nope")])
    assert r.exit_code != 0 and "no such file or folder" in r.output
    r = runner.invoke(cli, ["--home", str(home), "index", "--model", "lite9", str(few_photos)])
    assert r.exit_code != 0 and "unknown model 'lite9'" in r.output
    assert not home.exists()


def test_wrong_model_for_existing_gallery_is_refused(home, few_photos):
    g = Gallery.open(home, create=True)
    ingest(g.core, [few_photos / "airplanes"])
    with pytest.raises(GalleryError, match="indexed with lite0"):
        ingest(g.core, [few_photos / "sunflower"], model_name="lite2")
    assert g.core.catalog.images.count_images() == 4


def test_corrupt_or_stale_index_is_rebuilt(home, few_photos):
    g = Gallery.open(home, create=True)
    ingest(g.core, [few_photos])
    index_file, _ = SpaceIndex.paths(g.core.index_dir, "lite0")
    index_file.write_bytes(b"garbage" * 100)
    idx, how = SpaceIndex.open(g.core.catalog, g.core.index_dir, "lite0")
    assert how.startswith("rebuilt") and idx.ntotal == 12
    idx2, how2 = SpaceIndex.open(g.core.catalog, g.core.index_dir, "lite0")
    assert how2 == "loaded" and idx2.ntotal == 12
    index_file.unlink()
    idx3, how3 = SpaceIndex.open(g.core.catalog, g.core.index_dir, "lite0")
    assert how3.startswith("rebuilt") and idx3.ntotal == 12
    # a reopened gallery searches from the rebuilt index
    g2 = Gallery.open(home)
    hit = search_file(g2.core, next((few_photos / "airplanes").iterdir()), k=1).hits[0]
    assert hit.score > 0.999


def test_leave_one_out_retrieval_is_far_above_chance(home, caltech_small):
    g = Gallery.open(home, create=True)
    report = ingest(g.core, [caltech_small])
    assert report.added > 140  # of 150: Caltech-101 repeats a few photos byte for byte
    ids, vecs = g.core.catalog.vectors.vectors_by_model("lite0")
    rows = g.core.catalog.images.images(ids)
    labels = np.array([Path(rows[i].source).parent.name for i in ids])
    scores, found = g.core.index().search(vecs, 2)  # first hit is the query itself
    assert (found[:, 0] == ids).all()
    top1 = (labels[np.searchsorted(ids, found[:, 1])] == labels).mean()
    print(f"leave-one-out top-1 {top1:.3f}")  # measured 0.925 with lite0; chance is 0.1
    assert top1 > 0.85, top1
    # the query path agrees with the raw index
    res = search_gallery_image(g.core, int(ids[0]), k=3)
    assert res.hits[0].image_id == int(found[0, 1]) and len(res.hits) == 3
