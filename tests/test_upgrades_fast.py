"""Upgrades in the fast tier, through numpy fake models (tests/fakes.py): the pre-flight and
the instant switch, rollback, backfill, gallery transforms (exact head and learned map), bridges
to another space (fused, native, queries), re-embedding, compare, and what an interruption
leaves (should_stop and Ctrl-C between batches; a rerun resumes). Fitting a head or a bridge
trains torch modules and saves checkpoints: those stay in the default tier (test_fit.py,
test_bridge.py)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from fakes import ALBUMS, PER_ALBUM, FakeModels, make_photos, open_fake, photo_bytes

from search.errors import GalleryError

pytestmark = [pytest.mark.fast, pytest.mark.usefixtures("no_fsync")]

N = len(ALBUMS) * PER_ALBUM
FUSED = "fused:fake-a+fake-b-bridge@0.50"


def counts(g) -> dict[tuple[str, str], tuple[int, int]]:
    """(space, model) -> (vectors, of them transformed)."""
    return {(r["space"], r["model"]): (r["vectors"], r["transformed"])
            for r in g.core.catalog.vectors.vector_counts()}  # what info()["vectors"] says, without its timing


def same_album_hits(g, colour: str = "red", k: int = 5) -> bool:
    return all(h.name.startswith(colour) for h in g.search(photo_bytes(colour, 77), k=k).hits)


# -- the instant switch --------------------------------------------------------------------------

@pytest.mark.usefixtures("store")
def test_upgrade_to_a_compatible_model_switches_without_recomputing(fake_gallery):
    before = counts(fake_gallery)
    result = fake_gallery.upgrade("fake-a2")
    assert result.changed and not result.forced and result.mode == "queries"
    assert (result.model, result.previous, result.space) == ("fake-a2", "fake-a", "fake-a")
    assert result.vectors_recomputed == 0 and counts(fake_gallery) == before
    check = result.preflight
    assert check.passed and check.verdict in ("no worse", "better") and check.own_rank < 0.05
    assert check.albums["queries"] >= 16 and check.measured is not None
    assert fake_gallery.core.model_provider.loaded["fake-a2"].calls == check.sample  # the sample only
    assert fake_gallery.active_model == "fake-a2" and fake_gallery.models.history() == ["fake-a"]
    assert same_album_hits(fake_gallery)
    assert fake_gallery.models.serving() == {"mode": "queries", "spaces": ["fake-a"], "weights": [1.0],
                                      "models": ["fake-a2"], "space": "fake-a"}


def test_a_dry_run_measures_and_changes_nothing(fake_gallery):
    result = fake_gallery.upgrade("fake-a2", dry_run=True)
    assert result.dry_run and not result.changed and result.preflight.passed
    assert "dry run" in result.notes[-1] and fake_gallery.active_model == "fake-a"


def test_an_unrelated_model_is_refused_and_force_switches_anyway(fake_gallery):
    from search.api import PreflightRefused

    with pytest.raises(PreflightRefused, match="pre-flight check refused fake-rogue") as e:
        fake_gallery.upgrade("fake-rogue")
    refused = e.value.result
    assert refused.preflight.verdict == "incompatible" and refused.preflight.own_rank > 0.2
    assert "graceful train --from-gallery" in refused.next_step["command"]
    assert fake_gallery.active_model == "fake-a"
    forced = fake_gallery.upgrade("fake-rogue", force=True)
    assert forced.changed and forced.forced and fake_gallery.active_model == "fake-rogue"


def test_upgrade_refusals_name_the_problem(fake_gallery):
    with pytest.raises(GalleryError, match="already the active model"):
        fake_gallery.upgrade("fake-a")
    with pytest.raises(GalleryError, match="unknown model"):
        fake_gallery.upgrade("nope")
    with pytest.raises(GalleryError, match="unknown mode"):
        fake_gallery.upgrade("fake-a2", mode="sideways")
    with pytest.raises(GalleryError, match="carries no gallery transform"):
        fake_gallery.upgrade("fake-a2", transform=True)
    with pytest.raises(GalleryError, match="fit a bridge to a model of another space first"):
        fake_gallery.upgrade("fake-a-head", mode="fused")
    assert fake_gallery.active_model == "fake-a" and fake_gallery.models.history() == []


def test_upgrade_on_an_empty_gallery_is_refused(tmp_path):
    g = open_fake(tmp_path / "g")
    with pytest.raises(GalleryError, match="no model yet"):
        g.upgrade("fake-a2")
    g.close()


@pytest.mark.usefixtures("store")
def test_after_an_upgrade_new_photos_are_embedded_by_the_new_model(fake_gallery, tmp_path):
    fake_gallery.upgrade("fake-a2")
    fake_gallery.add(make_photos(tmp_path / "new", ["purple"], 3))
    hits = fake_gallery.search(photo_bytes("purple", 5), k=N + 3).hits
    by = fake_gallery.photos.embedded_by([h.image_id for h in hits])
    assert sorted(by.values()).count("fake-a2") == 3 and sorted(by.values()).count("fake-a") == N
    with pytest.raises(GalleryError, match="no text tower"):
        fake_gallery.search(text="red")  # fake-a2 has none


@pytest.mark.usefixtures("store")
def test_rollback_is_instant_and_keeps_the_newer_vectors(fake_gallery, tmp_path):
    fake_gallery.upgrade("fake-a2")
    fake_gallery.add(make_photos(tmp_path / "new", ["purple"], 3))
    result = fake_gallery.rollback()
    assert (result.model, result.previous, result.space) == ("fake-a", "fake-a2", "fake-a")
    assert result.kept_vectors == 3 and result.need_reembed == 0
    assert fake_gallery.active_model == "fake-a" and fake_gallery.models.history() == []
    with pytest.raises(GalleryError, match="nothing to roll back to"):
        fake_gallery.rollback()


@pytest.mark.usefixtures("store")
def test_a_second_connection_sees_an_upgrade_at_once(fake_gallery):
    other = open_fake(fake_gallery.home)
    fake_gallery.upgrade("fake-a2")
    assert other.active_model == "fake-a2" and other.search(photo_bytes("red", 1), k=1).model == "fake-a2"
    other.rollback()
    assert fake_gallery.active_model == "fake-a"
    other.close()


# -- backfill ------------------------------------------------------------------------------------

@pytest.mark.usefixtures("store")
def test_backfill_replaces_every_older_vector(fake_gallery):
    fake_gallery.upgrade("fake-a2")
    assert fake_gallery.backfill_status().older_vectors == N
    state = fake_gallery.backfill()
    assert (state.done, state.total, state.failed, state.interrupted) == (N, N, 0, False)
    status = fake_gallery.backfill_status().as_dict()
    assert status["fraction_backfilled"] == 1.0 and status["older_vectors"] == 0
    assert counts(fake_gallery)[("fake-a", "fake-a2")] == (N, 0)
    assert same_album_hits(fake_gallery, "blue")
    assert fake_gallery.backfill().total == 0  # nothing left


def test_backfill_with_a_limit_and_each_order(fake_gallery):
    fake_gallery.upgrade("fake-a2")
    done = 0
    for order in ("oldest", "most-retrieved", "uncertainty", "random"):
        done += fake_gallery.backfill(order, limit=5).done
        assert fake_gallery.backfill_status().by_active_model == done
    with pytest.raises(GalleryError, match="unknown backfill order"):
        fake_gallery.backfill("sideways")


@pytest.mark.usefixtures("store")
def test_an_interrupted_backfill_keeps_its_batches_and_resumes(fake_gallery):
    fake_gallery.upgrade("fake-a2")
    asked = []

    def stop() -> bool:  # asked after each committed batch: stop after the second
        asked.append(1)
        return len(asked) == 2

    first = fake_gallery.backfill(batch_size=8, should_stop=stop)
    assert first.interrupted and first.done == 16
    assert fake_gallery.backfill_status().by_active_model == 16
    rest = fake_gallery.backfill(batch_size=8)
    assert rest.total == N - 16 and rest.done == N - 16 and not rest.interrupted
    assert fake_gallery.backfill_status().fraction_backfilled == 1.0


@pytest.mark.usefixtures("store")
def test_ctrl_c_in_a_backfill_loses_at_most_the_batch_in_flight(fake_gallery):
    fake_gallery.upgrade("fake-a2")
    seen = []

    def interrupt(p):
        seen.append(p.done)
        if len(seen) == 3:
            raise KeyboardInterrupt

    state = fake_gallery.backfill(batch_size=8, progress=interrupt)
    assert state.interrupted and fake_gallery.backfill_status().by_active_model == 24
    assert fake_gallery.check().ok
    assert fake_gallery.backfill(batch_size=8).done == N - 24


def test_a_backfill_curve_is_recorded_against_labelled_queries(fake_gallery, fake_queries):
    fake_gallery.upgrade("fake-a2")
    curve = fake_gallery.reports.curve_recorder(fake_queries)
    fake_gallery.backfill(curve=curve)
    report = fake_gallery.reports.backfill_curve()
    assert report["queries"] == 12 and report["curve"][0]["fraction"] == 0.0
    assert report["curve"][-1]["fraction"] == 1.0 and 0 < report["auc_map"] <= 1


# -- gallery transforms --------------------------------------------------------------------------

def test_an_exact_transform_moves_the_gallery_into_the_models_own_space(fake_gallery):
    result = fake_gallery.upgrade("fake-a-head", transform=True)
    assert result.changed and result.transform and result.mode == "native"
    assert result.vectors_transformed == N and result.space == "fake-a-head"
    assert fake_gallery.space == "fake-a-head" and fake_gallery.models.serving_space("fake-a-head") == "fake-a-head"
    assert counts(fake_gallery)[("fake-a-head", "fake-a-head")] == (N, N)
    assert fake_gallery.core.model_provider.loaded["fake-a-head"].calls <= 64  # the pre-flight only
    # exact: the moved vectors are the model's own embeddings of the photos
    hit = fake_gallery.search(photo_bytes("green", 3), k=1).hits[0]
    own = fake_gallery.search(image=hit.image_id, k=1)
    assert own.space == "fake-a-head" and same_album_hits(fake_gallery, "green")
    back = fake_gallery.rollback()
    assert back.space == "fake-a" and fake_gallery.space == "fake-a"


def test_a_transform_back_to_the_declared_space_by_a_plain_upgrade(fake_gallery):
    fake_gallery.upgrade("fake-a-head", transform=True)
    fake_gallery.rollback()
    result = fake_gallery.upgrade("fake-a-head")  # without --transform: queries path again
    assert result.mode == "queries" and fake_gallery.space == "fake-a"


@pytest.mark.usefixtures("store")
def test_a_learned_map_records_its_uncertainty_and_backfill_replaces_the_worst_first(fake_gallery):
    result = fake_gallery.upgrade("fake-a-map", transform=True)
    assert result.changed and "learned map" in result.notes[-1]
    assert fake_gallery.backfill_status().transformed == N
    order = []
    fake_gallery.backfill("uncertainty", limit=10, progress=lambda p: order.append(p.done))
    status = fake_gallery.backfill_status().as_dict()
    assert status["transformed"] == N - 10 and status["by_active_model"] == 10
    fake_gallery.backfill("uncertainty")
    assert fake_gallery.backfill_status().as_dict() | {"images": N} == {
        "model": "fake-a-map", "space": "fake-a-map", "images": N, "by_active_model": N,
        "older_vectors": 0, "transformed": 0, "missing": 0, "fraction_backfilled": 1.0}


@pytest.mark.usefixtures("store")
def test_an_interrupted_transform_resumes_where_it_stopped(tmp_path, fake_gallery):
    from search.settings import Settings

    home = fake_gallery.home
    fake_gallery.close()
    g = open_fake(home, settings=replace(Settings.from_env(), transform_batch=10))
    calls = [0]

    def stop() -> bool:
        calls[0] += 1
        return calls[0] == 2

    first = g.upgrade("fake-a-head", transform=True, should_stop=stop)
    assert not first.changed and first.vectors_transformed == 20 and "interrupted" in first.notes[-1]
    assert g.active_model == "fake-a" and g.space == "fake-a"  # searches never noticed
    second = g.upgrade("fake-a-head", transform=True)
    assert second.changed and second.vectors_transformed == N - 20
    assert counts(g)[("fake-a-head", "fake-a-head")] == (N, N)
    g.close()


@pytest.mark.usefixtures("store")
def test_ctrl_c_during_a_transform_leaves_the_old_space_serving(fake_gallery):
    from search.settings import Settings

    home = fake_gallery.home
    fake_gallery.close()
    g = open_fake(home, settings=replace(Settings.from_env(), transform_batch=16))

    def interrupt(p):
        if p.done >= 16:
            raise KeyboardInterrupt

    result = g.upgrade("fake-a-head", transform=True, progress=interrupt)
    assert not result.changed and g.active_model == "fake-a" and g.check().ok
    assert same_album_hits(g, "yellow")
    assert g.upgrade("fake-a-head", transform=True).changed
    g.close()


# -- bridges to another space --------------------------------------------------------------------

@pytest.mark.usefixtures("store")
def test_upgrading_to_another_space_takes_the_bridges_recommended_fused_path(fake_gallery):
    result = fake_gallery.upgrade("fake-b")
    assert result.changed and result.mode == "fused" and result.model == FUSED
    assert result.vectors_transformed == N and result.recommended == "fused"
    serving = fake_gallery.models.serving()
    assert serving["mode"] == "fused" and serving["spaces"] == ["fake-a", "fake-b"]
    assert serving["weights"] == [0.5, 0.5] and serving["models"] == ["fake-a", "fake-b"]
    assert counts(fake_gallery)[(FUSED, FUSED)] == (N, N)
    assert fake_gallery.search(photo_bytes("blue", 1), k=1).space == FUSED
    assert same_album_hits(fake_gallery, "blue") and same_album_hits(fake_gallery, "red")


@pytest.mark.usefixtures("store")
def test_in_fused_mode_new_photos_fill_both_generations_spaces(fake_gallery, tmp_path):
    fake_gallery.upgrade("fake-b-bridge", mode="fused", weight=0.3)
    name = "fused:fake-a+fake-b-bridge@0.30"
    assert fake_gallery.active_model == name and fake_gallery.models.serving()["weights"] == [0.3, 0.7]
    fake_gallery.add(make_photos(tmp_path / "new", ["purple"], 4))
    c = counts(fake_gallery)
    assert c[(name, name)] == (N + 4, N) and c[("fake-a", "fake-a")] == (N + 4, 0)
    assert c[("fake-b", "fake-b")] == (4, 0)
    assert same_album_hits(fake_gallery, "purple", k=3)


def test_fused_weights_out_of_range_are_refused(fake_gallery):
    for w in (0.0, 1.0, 1.5):
        with pytest.raises(GalleryError, match="must be between 0 and 1"):
            fake_gallery.upgrade("fake-b-bridge", mode="fused", weight=w)
    assert fake_gallery.active_model == "fake-a"


@pytest.mark.usefixtures("store")
def test_the_native_path_moves_the_gallery_into_the_new_space(fake_gallery):
    result = fake_gallery.upgrade("fake-b", mode="native")
    assert result.changed and result.model == "fake-b" and fake_gallery.space == "fake-b"
    assert fake_gallery.models.serving()["mode"] == "native"
    assert counts(fake_gallery)[("fake-b", "fake-b")] == (N, N)
    assert same_album_hits(fake_gallery, "green")
    fake_gallery.backfill("uncertainty")  # mapped vectors replaced by real fake-b embeddings
    assert counts(fake_gallery)[("fake-b", "fake-b")] == (N, 0)


@pytest.mark.usefixtures("store")
def test_the_queries_path_serves_the_bridges_query_map_over_the_old_vectors(fake_gallery):
    result = fake_gallery.upgrade("fake-b", mode="queries")
    assert result.changed and result.model == "fake-b-bridge" and result.mode == "queries"
    assert fake_gallery.space == "fake-a" and result.vectors_transformed == 0
    assert same_album_hits(fake_gallery, "yellow")


def test_a_bridged_dry_run_changes_nothing(fake_gallery):
    result = fake_gallery.upgrade("fake-b", mode="fused", dry_run=True)
    assert not result.changed and "dry run" in result.notes[-1]
    assert fake_gallery.active_model == "fake-a" and set(counts(fake_gallery)) == {("fake-a", "fake-a")}


def test_without_a_bridge_a_dry_run_says_how_to_get_one(tmp_path, fake_gallery):
    home = fake_gallery.home
    fake_gallery.close()
    g = open_fake(home, FakeModels(missing=["fake-b-bridge"]))
    with pytest.raises(GalleryError, match="fits a label-free bridge first"):
        g.upgrade("fake-b", dry_run=True)
    g.close()


@pytest.mark.usefixtures("store")
def test_rolling_back_from_fused_returns_to_the_old_space(fake_gallery):
    fake_gallery.upgrade("fake-b")
    back = fake_gallery.rollback()
    assert back.model == "fake-a" and back.space == "fake-a" and fake_gallery.models.serving()["mode"] == "native"
    assert counts(fake_gallery)[(FUSED, FUSED)] == (N, N)  # kept: upgrading again is instant
    assert fake_gallery.upgrade(FUSED).vectors_transformed == 0


def test_a_blend_of_two_query_models_of_one_space(fake_gallery):
    result = fake_gallery.upgrade("fake-a2", mode="fused", weight=0.5)
    assert result.changed and result.model == "blend:fake-a+fake-a2@0.50"
    serving = fake_gallery.models.serving()
    assert serving["mode"] == "fused" and serving["spaces"] == ["fake-a"] and fake_gallery.space == "fake-a"
    assert same_album_hits(fake_gallery, "red")


# -- re-embedding --------------------------------------------------------------------------------

@pytest.mark.usefixtures("store")
def test_reembed_fills_the_new_space_then_switches(fake_gallery):
    with pytest.raises(GalleryError, match="compatible with this gallery"):
        fake_gallery.reembed("fake-a2")
    state, switched = fake_gallery.reembed("fake-b")
    assert switched and state.done == N and fake_gallery.active_model == "fake-b"
    assert fake_gallery.space == "fake-b" and same_album_hits(fake_gallery, "blue")
    with pytest.raises(GalleryError, match="already the active model"):
        fake_gallery.reembed("fake-b")


@pytest.mark.usefixtures("store")
def test_an_interrupted_reembed_resumes_and_a_complete_space_switches_natively(fake_gallery):
    state, switched = fake_gallery.reembed("fake-b", batch_size=8, should_stop=lambda: True)
    assert state.interrupted and not switched and state.done == 8
    state, switched = fake_gallery.reembed("fake-b", switch=False)
    assert state.done == N - 8 and not switched and fake_gallery.active_model == "fake-a"
    result = fake_gallery.upgrade("fake-b")  # its space holds every photo: no bridge needed
    assert result.changed and result.mode == "native" and result.vectors_transformed == 0
    assert fake_gallery.space == "fake-b"


# -- compare -------------------------------------------------------------------------------------

@pytest.mark.usefixtures("store")
def test_compare_on_a_labelled_folder(fake_gallery, fake_queries):
    fake_gallery.upgrade("fake-a2")
    report = fake_gallery.compare(fake_queries).as_dict()
    s = report["summary"]
    assert (s["old"], s["new"], s["queries"], s["labelled"]) == ("fake-a", "fake-a2", 12, True)
    assert s["old_metrics"]["top1"] >= 0.9 and s["new_metrics"]["top1"] >= 0.9
    assert 0.5 <= s["overlap_at_k"] <= 1 and set(s["lost_at_k"]) >= {"5", "10"}
    assert len(report["queries"]) == 12 and report["path"]
    assert fake_gallery.reports.comparison().summary == s
    assert s["plan_check"] is None  # not a bridged path


def test_compare_on_the_query_log(fake_gallery):
    fake_gallery.query_log(on=True)
    for seed in range(3):
        fake_gallery.search(photo_bytes("green", 100 + seed), k=5, log=True)
    fake_gallery.upgrade("fake-a2")
    s = fake_gallery.compare("log", k=5).summary
    assert s["queries"] == 3 and not s["labelled"] and s["k"] == 5


def test_compare_after_a_bridged_upgrade_checks_the_plans_prediction(fake_gallery, fake_queries):
    fake_gallery.upgrade("fake-b")
    s = fake_gallery.compare(fake_queries).summary
    assert s["new_space"] == FUSED and s["old_space"] == "fake-a"
    check = s["plan_check"]
    assert check["bridge"] == "fake-b-bridge" and check["path"] == "fused" and check["weight"] == 0.5
    assert check["checks"]["kept_old"]["predicted"] == 0.8


def test_compare_needs_an_old_model_and_queries(fake_gallery, tmp_path):
    with pytest.raises(GalleryError, match="no previous model"):
        fake_gallery.compare(tmp_path)
    fake_gallery.upgrade("fake-a2")
    fake_gallery.query_log(on=False)
    with pytest.raises(GalleryError, match="query log has no image searches"):
        fake_gallery.compare("log")
    with pytest.raises(GalleryError, match="no such folder"):
        fake_gallery.compare(tmp_path / "missing")


# -- the whole journey, checked ------------------------------------------------------------------

@pytest.mark.usefixtures("store")
def test_a_gallery_through_every_generation_stays_sound(fake_gallery, tmp_path):
    g = fake_gallery
    g.upgrade("fake-a2")
    g.backfill()
    g.upgrade("fake-a-map", transform=True)
    assert g.rollback().model == "fake-a2"
    g.upgrade("fake-b")  # the bridge maps space fake-a, which fake-a2 serves
    assert g.active_model == "fused:fake-a2+fake-b-bridge@0.50"
    g.add(make_photos(tmp_path / "new", ["purple"], 2))
    assert g.models.serving()["mode"] == "fused" and g.check().ok
    history = g.models.history()
    assert history == ["fake-a", "fake-a2"]
    for expected in reversed(history):
        assert g.rollback().model == expected and g.check().ok
    assert g.active_model == "fake-a" and same_album_hits(g, "purple", k=2)
    info = g.info().as_dict()
    assert info["images"] == N + 2
    assert {m["name"] for m in info["models"]} >= {"fake-a", "fake-a2", "fake-a-map"}
    assert np.isfinite(info["serving"]["search_p50_ms"])


# -- background jobs (the app's): their own Gallery, the same provider ---------------------------

@pytest.mark.usefixtures("store")
def test_a_background_transform_then_backfill_job(fake_gallery):
    from search.jobs import JobRunner, transform_job

    models = FakeModels()
    job = JobRunner().start("transform", transform_job(fake_gallery.home, "fake-a-map",
                                                       then_backfill=True, models=models))
    job._thread.join(30)
    assert job.status == "finished", job.message
    assert "switched to it (native mode)" in job.message and f"backfilled {N} photos" in job.message
    assert fake_gallery.active_model == "fake-a-map" and fake_gallery.backfill_status().transformed == 0
    assert models.loaded["fake-a-map"].calls >= N  # the job's own gallery used the provider given


def test_a_paused_backfill_job_resumes_where_it_stopped(fake_gallery):
    from search.jobs import Job, backfill_job

    fake_gallery.upgrade("fake-a2")
    paused = Job("backfill")
    paused.stop()  # asked to stop before it starts: it stops after its first batch
    first = backfill_job(fake_gallery.home, "oldest", models=FakeModels())(paused)
    assert first["interrupted"] and first["done"] == 16 and paused.done == 16
    resumed = Job("backfill")
    second = backfill_job(fake_gallery.home, "oldest", models=FakeModels())(resumed)
    assert second["done"] == N - 16 and not second["interrupted"]
    assert fake_gallery.backfill_status().fraction_backfilled == 1.0


def test_a_failed_job_is_one_line_and_only_our_own_faults_reach_the_log(capfd):
    """A user's fault (a GalleryError, a DatasetError, a full disk) fails the job with its one
    line and no traceback in the server's log; a fault of ours is logged with its traceback."""
    import errno

    from models.imagefolder import DatasetError

    from search.errors import GalleryError
    from search.jobs import JobRunner

    def failing(e: Exception):
        def work(job):
            raise e
        return work

    runner = JobRunner()
    faults = {"gallery": GalleryError("no such model: nope"),
              "dataset": DatasetError("too few photos: 3"),
              "disk": OSError(errno.ENOSPC, "No space left on device", "/g/catalog.db"),
              "ours": KeyError("bug")}
    for name, e in faults.items():
        job = runner.start(name, failing(e))
        job._thread.join(10)
        assert job.status == "failed"
    assert runner.get("gallery").message == "no such model: nope"
    assert runner.get("dataset").message == "too few photos: 3"
    assert runner.get("disk").message.startswith("the disk is full (writing /g/catalog.db)")
    assert runner.get("ours").message == "'bug'"
    log = capfd.readouterr().err
    assert log.count("Traceback") == 1 and "KeyError: 'bug'" in log
