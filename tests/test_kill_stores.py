"""kill -9 and Ctrl-C of real CLI processes, on every vector store and catalog: ingest, backfill,
re-embed, a gallery transform and the switch itself stop anywhere and resume with nothing lost or
done twice. The models are the numpy fakes (tests/fakes.py), given to the CLI the way a user
gives their own embedders (GRACEFUL_MODELS) and paced by GRACEFUL_FAKE_DELAY so that the kill
lands inside the job; the stores, catalogs, processes and signals are real. FAISS on SQLite is
the default tier, Milvus Lite and PostgreSQL the slow one (the `store` fixture). The real models'
own kill -9 runs stay in test_ingest, test_upgrade and test_transform (FAISS)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cli_fork
import pytest
from conftest import catalog_integrity, catalog_rows
from fakes import ALBUMS, PER_ALBUM, cli_env, open_fake

pytestmark = pytest.mark.usefixtures("store")
CLI = [sys.executable, "-m", "search.cli"]
N = len(ALBUMS) * PER_ALBUM


def env_for(home: Path, **extra: str) -> dict[str, str]:
    return cli_env(home, **{"GRACEFUL_FAKE_DELAY": "0.02", **extra})


def cli_json(home: Path, *args: str, **extra: str) -> dict:
    r = cli_fork.run([*args, "--json"], env=env_for(home, GRACEFUL_FAKE_DELAY="0", **extra),
                     timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def count(home: Path, sql: str, *params) -> int:
    return catalog_rows(home, sql, params)[0][0]


def vectors_of(home: Path, model: str) -> int:
    return count(home, "SELECT count(*) FROM vectors WHERE model = ?", model)


def test_kill_9_during_ingest_then_resume(home, fake_photos, run_and_kill):
    rc = run_and_kill([*CLI, "index", "--batch-size", "4", str(fake_photos)], env_for(home),
                      lambda: count(home, "SELECT count(*) FROM images") >= 12, timeout=120)
    assert rc == -signal.SIGKILL, "the ingest finished before it could be killed"
    assert catalog_integrity(home) == "ok"
    g = open_fake(home)
    partial = g.photos.count()
    assert 12 <= partial < N
    assert g.core.index().ntotal == partial  # the index agrees with the catalog
    report = g.add(fake_photos)
    assert (report.duplicates, report.added) == (partial, N - partial)
    assert g.photos.count() == N == g.core.index().ntotal and g.check().ok
    ids = [r[0] for r in catalog_rows(home, "SELECT id FROM images")]
    assert len(ids) == len(set(ids)) == N
    g.close()
    g = open_fake(home)  # the next process loads the saved index as it is
    idx, how = g.core.vector_store.open(g.core.catalog, "fake-a", g.core.index_kind)
    assert how == "loaded" and idx.ntotal == N
    g.close()


def test_ctrl_c_stops_an_ingest_cleanly_and_it_resumes(home, fake_photos):
    # Ctrl-C reaches the child as KeyboardInterrupt even where this runner ignores SIGINT (set in
    # the child itself: no preexec_fn, which aborts when gRPC threads of earlier tests run)
    cmd = [sys.executable, "-c", "import runpy, signal, sys; signal.signal(signal.SIGINT, "
           "signal.default_int_handler); sys.argv[0] = 'graceful'; "
           "runpy.run_module('search.cli', run_name='__main__', alter_sys=True)",
           "index", "--batch-size", "4", str(fake_photos)]
    proc = subprocess.Popen(cmd, env=env_for(home), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if count(home, "SELECT count(*) FROM images") >= 12:
                break
        except Exception:  # not created yet
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert b"interrupted: run the same command again to resume" in err
    g = open_fake(home)
    done = g.photos.count()
    assert 12 <= done < N and g.core.index().ntotal == done
    assert g.add(fake_photos).added == N - done and g.check().ok
    g.close()


def test_kill_9_during_backfill_and_reembed_then_resume(fake_gallery, fake_photos, run_and_kill):
    home = fake_gallery.home
    fake_gallery.upgrade("fake-a2")
    fake_gallery.close()
    rc = run_and_kill([*CLI, "backfill", "--batch-size", "4"], env_for(home),
                      lambda: vectors_of(home, "fake-a2") >= 8)
    assert rc == -signal.SIGKILL and catalog_integrity(home) == "ok"
    partial = vectors_of(home, "fake-a2")
    assert 8 <= partial < N
    g = open_fake(home)
    assert g.backfill_status().by_active_model == partial and g.core.index().ntotal == N
    # every photo searchable exactly once, half old vectors and half new
    assert set(g.core.index().ids().tolist()) == {r[0] for r in catalog_rows(home, "SELECT id FROM images")}
    assert len(g.search(next((fake_photos / ALBUMS[0]).iterdir()), k=5).hits) == 5
    assert g.backfill().done == N - partial  # resumed: nothing embedded twice
    g.close()

    rc = run_and_kill([*CLI, "reembed", "fake-b", "--batch-size", "4"], env_for(home),
                      lambda: vectors_of(home, "fake-b") >= 8)
    assert rc == -signal.SIGKILL and catalog_integrity(home) == "ok"
    partial = vectors_of(home, "fake-b")
    g = open_fake(home)
    assert 8 <= partial < N and g.active_model == "fake-a2" and g.core.index().ntotal == N
    g.close()
    out = cli_json(home, "reembed", "fake-b")
    assert out["done"] == N - partial and out["switched"]
    g = open_fake(home)
    assert g.space == "fake-b" and g.core.index().ntotal == N and g.check().ok
    g.close()


def test_kill_9_during_a_transform_then_resume(fake_gallery, run_and_kill):
    home = fake_gallery.home
    fake_gallery.close()
    moved = lambda: count(home, "SELECT count(*) FROM vectors WHERE space = 'fake-a-map'")  # noqa: E731
    rc = run_and_kill([*CLI, "upgrade", "fake-a-map", "--transform"],
                      env_for(home, GRACEFUL_TRANSFORM_BATCH="4"), lambda: moved() >= 8)
    assert rc == -signal.SIGKILL, "the kill must land inside the transform"
    assert catalog_integrity(home) == "ok"
    part = moved()
    assert 8 <= part < N
    g = open_fake(home)
    assert g.active_model == "fake-a" and g.core.index().ntotal == N  # still the old space
    g.close()
    up = cli_json(home, "upgrade", "fake-a-map", "--transform")
    assert up["changed"] and up["vectors_transformed"] == N - part
    g = open_fake(home)
    assert g.space == "fake-a-map" and g.core.index().ntotal == N and g.check().ok
    g.close()


def test_kill_9_inside_the_switch_leaves_the_old_state_whole(fake_gallery, kill_at, tmp_path):
    """kill -9 inside the upgrade's transaction (after the history row, and before COMMIT):
    the old state is whole; the next upgrade goes through (SQLite catalogs: the pause hook stops
    SQLite statements; PostgreSQL's writer kill is tests/test_catalogs.py's)."""
    home = fake_gallery.home
    fake_gallery.close()

    def state() -> tuple:
        assert catalog_integrity(home) == "ok"
        g = open_fake(home)
        try:
            assert g.core.index().ntotal == N
            return g.active_model, tuple(g.models.history())
        finally:
            g.close()

    for point in ("write:active_model", "commit:active_model"):
        marker = tmp_path / f"paused-{point.replace(':', '-')}"
        rc = kill_at(["search.cli", "upgrade", "fake-a2"], env_for(home), point, marker)
        assert marker.exists(), f"the upgrade never reached {point} (exit {rc})"
        assert marker.read_text() == "in a transaction" and rc == -signal.SIGKILL
        assert state() == ("fake-a", ()), point
    assert cli_json(home, "upgrade", "fake-a2")["changed"]
    assert state()[0] == "fake-a2"
