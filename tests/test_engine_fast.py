"""The engine in the fast tier: ingest, search, albums, the query log, info and check on
synthetic photos, with numpy fake models passed in through the model provider (tests/fakes.py).
No torch: the same operations the real backbones run, in milliseconds."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fakes import ALBUMS, PER_ALBUM, FakeModels, make_photos, open_fake, photo, photo_bytes

from search.errors import GalleryError

pytestmark = [pytest.mark.fast, pytest.mark.usefixtures("no_fsync")]

N = len(ALBUMS) * PER_ALBUM


def vector_counts(g) -> dict[tuple[str, str], int]:
    return {(r["space"], r["model"]): r["vectors"] for r in g.core.catalog.vectors.vector_counts()}


# -- the fakes themselves ----------------------------------------------------------------------

def test_fake_embedders_are_deterministic_unit_float32_in_their_space():
    a, b = FakeModels().load("fake-a"), FakeModels().load("fake-a")
    images = [photo("red", 1), photo("blue", 2)]
    x, y = a.embed_images(images), b.embed_images(images)
    assert x.dtype == np.float32 and x.shape == (2, 32) and np.array_equal(x, y)
    assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    fb = FakeModels().load("fake-b")
    assert fb.space == "fake-b" and fb.embed_images(images).shape == (2, 24)
    assert float(x[0] @ x[1]) < 0.9  # colours apart


def test_fake_provider_resolves_lists_and_refuses_like_the_registry():
    from models.registry import UnknownModelError

    models = FakeModels(missing=["fake-rogue"])
    names = {e.name for e in models.available()}
    assert "fake-a" in names and "fake-rogue" not in names
    bridge = models.resolve("fake-b-bridge")
    assert bridge.meta.method == "bridge" and bridge.space == "fake-a"
    assert models.resolve("fused:fake-a+fake-b-bridge@0.50").kind == "fused"
    assert models.load("fake-a") is models.load("fake-a")  # loaded once per provider
    for bad in ("fake-rogue", "lite0", "fused:fake-a+nope@0.5"):
        with pytest.raises(UnknownModelError):
            models.load(bad)


# -- ingest --------------------------------------------------------------------------------------

def test_ingest_adds_every_photo_with_its_album_and_the_default_model(tmp_path, fake_photos, store):
    g = open_fake(tmp_path / "g", store=store)
    report = g.add(fake_photos)
    assert (report.added, report.duplicates, report.skipped) == (N, 0, [])
    assert report.model == report.space == "fake-a" and not report.interrupted
    assert g.active_model == "fake-a" and g.photos.count() == N
    assert g.albums.list() == [{"album": a, "images": PER_ALBUM} for a in sorted(ALBUMS)]
    assert g.info().runtimes == {"fake-a": ["numpy"]}
    assert len(list((tmp_path / "g" / "images").rglob("*.*"))) == N
    g.close()


@pytest.mark.usefixtures("store")
def test_adding_the_same_photos_again_adds_nothing(fake_gallery, fake_photos):
    before = vector_counts(fake_gallery)
    report = fake_gallery.add(fake_photos)
    assert (report.added, report.duplicates) == (0, N)
    assert fake_gallery.photos.count() == N and vector_counts(fake_gallery) == before


def test_the_same_bytes_under_two_names_are_one_photo(tmp_path):
    (tmp_path / "p").mkdir()
    data = photo_bytes("green", 5)
    (tmp_path / "p" / "a.png").write_bytes(data)
    (tmp_path / "p" / "copy.png").write_bytes(data)
    (tmp_path / "p" / "other.png").write_bytes(photo_bytes("green", 6))
    g = open_fake(tmp_path / "g")
    report = g.add(tmp_path / "p")
    assert (report.added, report.duplicates) == (2, 1) and g.photos.count() == 2
    g.close()


def test_unreadable_files_are_skipped_with_a_reason(tmp_path):
    folder = make_photos(tmp_path / "p", ["red"], 3)
    (folder / "red" / "notes.jpg").write_text("not a photo")
    (folder / "red" / "empty.png").write_bytes(b"")
    g = open_fake(tmp_path / "g")
    report = g.add(folder)
    assert report.added == 3 and len(report.skipped) == 2
    assert {Path(p).name for p, _ in report.skipped} == {"notes.jpg", "empty.png"}
    assert all(reason for _, reason in report.skipped)
    g.close()


def test_album_option_and_album_from_folder(tmp_path, fake_photos):
    g = open_fake(tmp_path / "g")
    g.add(fake_photos / "red", album_from_folder=False)
    assert g.albums.list() == [{"album": None, "images": PER_ALBUM}]
    g.add([fake_photos / "red", fake_photos / "blue"], album="mixed")  # known photos move too
    assert g.albums.list() == [{"album": "mixed", "images": 2 * PER_ALBUM}]
    g.close()


def test_an_interrupted_ingest_keeps_its_batches_and_resumes(tmp_path, fake_photos, store):
    g = open_fake(tmp_path / "g", store=store)
    seen = []
    report = g.add(fake_photos, batch_size=8, should_stop=lambda: len(seen) >= 20,
                   progress=lambda p: seen.append(p.done))
    assert report.interrupted and 0 < g.photos.count() < N
    first = g.photos.count()
    report = g.add(fake_photos)
    assert report.added == N - first and report.duplicates == first and g.photos.count() == N
    g.close()


def test_ctrl_c_during_ingest_leaves_a_consistent_gallery(tmp_path, fake_photos, store):
    g = open_fake(tmp_path / "g", store=store)
    calls = []

    def interrupt(p):
        calls.append(p)
        if len(calls) == 30:
            raise KeyboardInterrupt

    report = g.add(fake_photos, batch_size=8, progress=interrupt)
    assert report.interrupted
    assert g.info().index["vectors"] == g.photos.count() < N  # index caught up with catalog
    g.close()
    g = open_fake(tmp_path / "g")
    kept = g.photos.count()
    assert g.add(fake_photos).added == N - kept
    assert g.photos.count() == N and g.check().ok
    g.close()


def test_a_photo_lost_from_the_store_is_restored_by_adding_it_again(fake_gallery, fake_photos):
    hit = fake_gallery.search(fake_photos / "red" / "red-00.png", k=1).hits[0]
    Path(hit.path).unlink()
    report = fake_gallery.add(fake_photos / "red")
    assert report.restored == 1 and Path(hit.path).is_file()


def test_a_new_gallery_takes_the_model_asked_for_and_keeps_it(tmp_path, fake_photos):
    g = open_fake(tmp_path / "g")
    assert g.add(fake_photos / "red", model="fake-b").space == "fake-b"
    assert g.active_model == "fake-b" and g.space == "fake-b"
    with pytest.raises(GalleryError, match="Switch with `graceful upgrade fake-a`"):
        g.add(fake_photos / "blue", model="fake-a")
    g.close()


def test_an_unknown_model_is_one_gallery_error(tmp_path, fake_photos):
    g = open_fake(tmp_path / "g")
    with pytest.raises(GalleryError, match="unknown model 'nope'"):
        g.add(fake_photos, model="nope")
    assert g.active_model is None
    g.close()


# -- search --------------------------------------------------------------------------------------

@pytest.mark.usefixtures("store")
def test_search_by_file_finds_its_album_first(fake_gallery, fake_photos):
    for colour in ALBUMS:
        result = fake_gallery.search(fake_photos / colour / f"{colour}-01.png", k=5)
        assert result.model == result.space == "fake-a" and len(result.hits) == 5
        assert result.hits[0].name == f"{colour}-01.png" and result.hits[0].score > 0.999
        assert all(h.name.startswith(colour) for h in result.hits)
        scores = [h.score for h in result.hits]
        assert scores == sorted(scores, reverse=True) and [h.rank for h in result.hits] == [1, 2, 3, 4, 5]
        assert {h.embedded_by for h in result.hits} == {"fake-a"}


def test_search_by_bytes_by_gallery_photo_and_by_text(fake_gallery):
    by_bytes = fake_gallery.search(photo_bytes("blue", 99), k=3)
    assert all(h.name.startswith("blue") for h in by_bytes.hits)
    first = by_bytes.hits[0]
    more = fake_gallery.search(image=first.image_id, k=4)
    assert len(more.hits) == 4 and first.image_id not in [h.image_id for h in more.hits]
    assert all(h.name.startswith("blue") for h in more.hits)
    assert fake_gallery.search(image=first.sha256[:10], k=4).hits == more.hits
    assert all(h.name.startswith("yellow") for h in fake_gallery.search(text="yellow", k=5).hits)


def test_search_refusals_are_gallery_errors(tmp_path, fake_gallery):
    with pytest.raises(GalleryError, match="k must be at least 1"):
        fake_gallery.search(photo_bytes("red", 1), k=0)
    with pytest.raises(GalleryError, match="no such image file"):
        fake_gallery.search(tmp_path / "missing.png")
    with pytest.raises(GalleryError, match="no gallery image"):
        fake_gallery.search(image=999999)
    with pytest.raises(GalleryError, match="cannot search with this file"):
        fake_gallery.search(b"not an image")
    empty = open_fake(tmp_path / "empty")
    empty.add([])
    with pytest.raises(GalleryError, match="empty"):
        empty.search(photo_bytes("red", 1))
    empty.close()


def test_a_compatible_model_can_query_without_switching(fake_gallery, fake_photos):
    q = fake_photos / "green" / "green-03.png"
    result = fake_gallery.search(q, k=3, model="fake-a2")
    assert result.model == "fake-a2" and result.space == "fake-a"
    assert result.hits[0].name == "green-03.png" and fake_gallery.active_model == "fake-a"


@pytest.mark.usefixtures("store")
def test_a_reopened_gallery_serves_the_same_results_from_its_saved_index(fake_gallery, fake_photos):
    q = fake_photos / "red" / "red-04.png"
    before = [h.image_id for h in fake_gallery.search(q, k=10).hits]
    home = fake_gallery.home
    if fake_gallery.core.vector_store.kind == "faiss":  # Milvus keeps its own
        assert list((home / "index").glob("*"))
    g = open_fake(home)
    assert [h.image_id for h in g.search(q, k=10).hits] == before and not g.core.notices
    g.close()


@pytest.mark.usefixtures("store")
def test_a_second_connection_sees_another_writers_photos(fake_gallery, tmp_path):
    other = open_fake(fake_gallery.home)
    assert other.search(photo_bytes("purple", 3), k=1).hits[0].name != "purple-00.png"
    fake_gallery.add(make_photos(tmp_path / "more", ["purple"], 2))
    hit = other.search(photo_bytes("purple", 3), k=1).hits[0]  # caught up from the catalog
    assert hit.name.startswith("purple") and other.photos.count() == N + 2
    other.close()


def test_the_query_log_records_searches_only_when_on(fake_gallery):
    assert fake_gallery.query_log(on=False).as_dict() == {"on": False, "recorded": 0}
    fake_gallery.search(photo_bytes("red", 50), k=3, log=True)
    assert fake_gallery.query_log().recorded == 0
    assert fake_gallery.query_log(on=True).on
    fake_gallery.search(photo_bytes("red", 50), k=3, log=True)
    fake_gallery.search(text="green", k=3, log=True)
    fake_gallery.search(photo_bytes("red", 51), k=3)  # not asked to log
    assert fake_gallery.query_log().recorded == 2


# -- albums, info, check -------------------------------------------------------------------------

def test_albums_set_move_and_rename(fake_gallery):
    ids = [h.image_id for h in fake_gallery.search(photo_bytes("red", 1), k=3).hits]
    assert fake_gallery.albums.set(ids, "best") == 3
    assert fake_gallery.albums.rename("best", "top") == 3
    albums = {a["album"]: a["images"] for a in fake_gallery.albums.list()}
    assert albums["top"] == 3 and albums["red"] == PER_ALBUM - 3
    assert fake_gallery.albums.set(ids[:1], None) == 1
    with pytest.raises(GalleryError, match="no album called"):
        fake_gallery.albums.rename("nope", "x")


def test_info_says_what_the_gallery_holds(fake_gallery):
    info = fake_gallery.info().as_dict()
    assert (info["images"], info["albums"], info["active_model"], info["space"]) == (N, 4, "fake-a", "fake-a")
    assert info["index"] == {"space": "fake-a", "vectors": N, "dim": 32}
    assert info["serving"]["mode"] == "native" and info["model_history"] == []
    assert info["vectors"] == [{"space": "fake-a", "model": "fake-a", "vectors": N,
                                "transformed": 0, "embedded": N}]
    assert fake_gallery.models.compatibility()["cells"]["fake-a"]["fake-a"]["native"]


def test_models_come_from_the_provider_passed_in(fake_gallery):
    from models import registry

    assert isinstance(fake_gallery.core.model_provider, FakeModels)
    assert "fake-b-bridge" in {e.name for e in fake_gallery.models.available()}
    assert fake_gallery.models.unreadable() == []
    assert fake_gallery.core.model_provider.loaded["fake-a"] is fake_gallery.models.embedder()
    from search.core import GalleryCore

    assert GalleryCore(fake_gallery.home, fake_gallery.core.catalog).model_provider is registry.REGISTRY


def test_your_own_models_come_in_through_graceful_models(tmp_path, fake_photos, monkeypatch):
    """GRACEFUL_MODELS names a provider (package.module:object): a gallery opened without
    `models=` takes it; one that does not load is one line, before anything is written."""
    from search.api import Gallery

    monkeypatch.setenv("GRACEFUL_MODELS", "fakes:FakeModels")
    g = Gallery.open(tmp_path / "g")
    g.add(fake_photos / "red")
    assert isinstance(g.core.model_provider, FakeModels) and g.active_model == "fake-a"
    g.close()
    for spec, says in (("fakes:nothing", "cannot load it"), ("no_such_pkg:X", "cannot load it"),
                       ("fakes:ALBUMS", "is not a provider of models")):
        monkeypatch.setenv("GRACEFUL_MODELS", spec)
        with pytest.raises(GalleryError, match=f"GRACEFUL_MODELS='{spec}'.*{says}"):
            Gallery.open(tmp_path / "h")
        assert not (tmp_path / "h").exists()


def test_settings_passed_in_are_the_ones_used(tmp_path, fake_photos):
    from search.settings import Settings

    settings = replace(Settings.from_env(), transform_batch=5)
    g = open_fake(tmp_path / "g", settings=settings)
    assert g.core.settings is settings
    g.add(fake_photos / "red")
    batches = []
    g.upgrade("fake-a-head", transform=True, progress=lambda p: batches.append(p.done))
    assert batches[:3] == [5, 10, 12] or batches[:2] == [5, 10]
    g.close()


@pytest.mark.usefixtures("store")
def test_check_passes_on_a_sound_gallery(fake_gallery):
    report = fake_gallery.check()
    assert report.ok, report.as_dict()
    assert {f.check for f in report.findings} >= {"catalog", "store", "index", "models"}


def test_check_finds_a_damaged_photo_and_repairs_it_from_its_source(fake_gallery, fake_photos):
    hit = fake_gallery.search(fake_photos / "blue" / "blue-02.jpg", k=1).hits[0]
    Path(hit.path).write_bytes(b"damaged")
    report = fake_gallery.check()
    assert not report.ok and any(f.check == "store" and f.status == "problem" for f in report.findings)
    repaired = fake_gallery.check(repair=True)
    assert any(f.status == "repaired" for f in repaired.findings)
    assert fake_gallery.check().ok


@pytest.mark.usefixtures("catalog")  # FAISS index files (Milvus: tests/test_milvus_damage.py)
def test_check_rebuilds_a_lost_index_from_the_catalog(fake_gallery):
    fake_gallery.close()
    shutil.rmtree(fake_gallery.home / "index")
    g = open_fake(fake_gallery.home)
    report = g.check()
    assert any(f.check == "index" and f.status == "problem" for f in report.findings)
    assert g.check(repair=True).ok and g.check().ok
    assert g.search(photo_bytes("red", 1), k=1).hits
    g.close()


def test_check_names_a_model_the_gallery_can_no_longer_load(fake_gallery):
    fake_gallery.upgrade("fake-a2")
    fake_gallery.close()
    g = open_fake(fake_gallery.home, FakeModels(missing=["fake-a2"]))
    report = g.check()
    problem = [f for f in report.findings if f.check == "models" and f.status == "problem"]
    assert len(problem) == 1 and "fake-a2 (the active model)" in problem[0].detail
    assert "rollback" in problem[0].next_step
    with pytest.raises(GalleryError, match="unknown model 'fake-a2'"):
        g.search(photo_bytes("red", 1))
    g.close()


def test_the_engine_runs_without_torch(tmp_path):
    """Ingest, upgrade, transform, fused serving and search through fakes in a fresh
    interpreter: torch is never imported."""
    from test_fast import python_without_torch

    code = ("import sys; sys.path.insert(0, 'tests')\n"
            "from pathlib import Path\n"
            "from fakes import make_photos, open_fake\n"
            f"root = Path({str(tmp_path)!r})\n"
            "g = open_fake(root / 'g')\n"
            "g.add(make_photos(root / 'p', per_album=3))\n"
            "g.upgrade('fake-a2'); g.backfill(); g.upgrade('fake-a-head', transform=True)\n"
            "g.rollback(); g.rollback(); g.upgrade('fake-b')\n"
            "assert g.models.serving()['mode'] == 'fused'\n"
            "print(g.search(text='red', k=3).hits[0].name)\n"
            "g.close()\n")
    r = python_without_torch(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("red-") and r.stderr.strip().endswith("HEAVY:"), r.stderr
