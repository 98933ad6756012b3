"""The catalog on both backends: every catalog-level behaviour on SQLite and on a real
PostgreSQL server (one per session, tests/pg_server.py), concurrency with real processes
(two writers, the history race, a killed writer, a server that goes away), moving a gallery
between them both ways, and bad input (one line each, nothing changed). Synthetic vectors, no
torch: the in-process tests are in the fast tier, those that start processes in the default one."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import cli_fork
import numpy as np
import pytest

fast = pytest.mark.fast

ROOT = Path(__file__).resolve().parent.parent
WORKER = str(ROOT / "tests" / "catalog_worker.py")


def unit(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path):
    """Where a new catalog goes: a SQLite file, or a new database on the session's server."""
    if request.param == "sqlite":
        return str(tmp_path / "catalog.db")
    return request.getfixturevalue("pg_server").new_database()


def open_at(location: str, create: bool = True):
    from search.settings import Settings
    from search.storage.catalog import catalog_location, open_catalog

    home = Path(location).parent if not location.startswith("postgresql") else Path("/tmp")
    return open_catalog(home, catalog_location(home, location), Settings.from_env(), create)


def fill(cat, n: int = 50, dim: int = 32, model: str = "old"):
    with cat.transaction():
        ids = [cat.images.add_image({"sha256": f"{i:064x}", "name": f"p{i}.jpg", "ext": ".jpg",
                                     "bytes": 1, "width": 1, "height": 1, "format": "JPEG",
                                     "source": f"/photos/{'cats' if i % 2 else 'dogs'}/p{i}.jpg",
                                     "added_at": float(i), "album": "cats" if i % 2 else "dogs"})
               for i in range(n)]
        cat.vectors.put_vectors(ids, unit(n, dim), model, "old")
    cat.state.set_state(cat.state.ACTIVE_MODEL, model)
    return ids


@fast
def test_every_repository_behaves_the_same(location):
    cat = open_at(location)
    assert cat.schema_version == 4 and cat.integrity_check() == ["ok"]
    ids = fill(cat)
    assert cat.images.add_image({"sha256": f"{0:064x}", "name": "again"}) == ids[0]  # known sha
    assert cat.images.albums() == [{"album": "cats", "images": 25}, {"album": "dogs", "images": 25}]
    assert cat.images.set_album(ids[:3], "best") == 3 and cat.images.rename_album("best", "top") == 3
    assert cat.images.count_images("top") == 3 and cat.images.album_labels(ids[:1]) == {ids[0]: "top"}
    assert cat.images.set_album_by_sha([f"{3:064x}"], None) == 1
    assert cat.images.albums()[-1] == {"album": None, "images": 1}  # no album sorts last
    newer = unit(5, seed=1)
    with cat.transaction():
        cat.vectors.put_vectors(ids[:5], newer, "new", "old", origin="map", uncertainty=np.arange(5.0))
    assert cat.vectors.space_version("old") == 2 and cat.vectors.space_dim("old") == 32
    served = cat.vectors.serving_vectors_of(ids[:6], "old")
    assert np.allclose(served[ids[0]], newer[0], atol=1e-3)
    assert len(cat.vectors.space_members("old")) == 50
    assert len(cat.vectors.space_members("old", exclude_model="new")) == 45
    chunks = list(cat.vectors.serving_rows("old", batch=20))
    assert sum(len(c.ids) for c in chunks) == 50 and len(chunks) == 3
    after = list(cat.vectors.serving_rows("old", after_seq=1))
    assert sorted(after[0].ids.tolist()) == ids[:5] and set(after[0].models) == {"new"}
    assert cat.vectors.count_served("old") == 50 and cat.vectors.count_vectors("new", "old") == 5
    assert cat.vectors.vector_counts() == [
        {"space": "old", "model": "new", "vectors": 5, "transformed": 5, "embedded": 0},
        {"space": "old", "model": "old", "vectors": 50, "transformed": 0, "embedded": 50}]
    assert [i for i, _ in cat.vectors.transformed_vectors("old", "new")] == ids[:5][::-1]
    assert cat.vectors.serving_model_of(ids[4:6], "old") == {ids[4]: "new", ids[5]: "old"}
    rows, by = cat.images.hit_rows(ids[:2], "old")
    assert rows[ids[0]].sha256 == f"{0:064x}" and by == {ids[0]: "new", ids[1]: "new"}
    assert cat.images.images_missing_in_space("other") == ids
    assert [i for i, _ in cat.images.images_without_model("old", "new")] == ids[5:]
    assert cat.images.image_ids_by_sha_prefix("0" * 63) and len(cat.images.list_images(10, 5)) == 5
    assert cat.vectors.images_to_transform("old", "t") == ids
    got_ids, vecs = cat.vectors.vectors_by_model("new", ids[:2])
    assert got_ids.tolist() == ids[:2] and vecs.shape == (2, 32)
    with pytest.raises(ValueError, match="32-d"):
        with cat.transaction():
            cat.vectors.put_vectors(ids[:1], unit(1, 8), "x", "old")
    info = {"name": "m", "space": "old", "dim": 32, "kind": "base", "compatible_with": ["old"]}
    cat.models.register_model(info, "base")
    cat.models.register_model(info, "base")  # twice: still one
    assert [m["name"] for m in cat.models.models()] == ["m"] and cat.models.model("m")["compatible_with"] == ["old"]
    cat.models.set_active_model("m")
    assert cat.models.active_model == "m" and cat.models.model("m")["activated_at"] is not None
    cat.models.set_serving_space("m", "mine")
    assert cat.models.serving_space("m") == "mine"
    cat.models.set_serving_space("m", None)
    assert cat.models.serving_space("m") is None
    gid = cat.state.gallery_id()
    assert gid == cat.state.gallery_id() and len(gid) == 12
    cat.state.note_runtime("m", ["torch"])
    cat.state.note_runtime("m", ["onnxruntime"])
    assert cat.state.runtimes() == {"m": ["onnxruntime", "torch"]}
    cat.state.set_vector_store({"kind": "milvus", "uri": "x"})
    cat.state.set_store_synced("old", {"version": 2, "kind": "flat"})
    assert cat.state.vector_store()["kind"] == "milvus" and cat.state.store_synced("old")["version"] == 2
    cat.state.set_vector_store(None)
    assert cat.state.vector_store() is None and cat.state.store_synced("old") is None
    cat.logs.log_event("upgrade", model="m")
    cat.logs.log_query("m", "image", "abc", "q.jpg", 5, [1, 2])
    cat.logs.log_query("m", "text", "", "a cat", 5, [3])
    assert list(cat.logs.logged_image_queries()) == [("q.jpg", "abc")]
    assert sorted(cat.logs.logged_results()) == [[1, 2], [3]] and cat.logs.count_logged_queries() == 2
    cat.logs.save_job("backfill", {"done": 1})
    cat.logs.save_job("backfill", {"done": 2})
    assert cat.vectors.has_vectors() and cat.state.log_queries()
    with cat.snapshot():
        assert cat.images.count_images() == 50
    cat.close()
    again = open_at(location, create=False)  # reopened: same state, no migration
    assert again.images.count_images() == 50 and again.models.active_model == "m"
    again.close()


@fast
def test_a_failed_transaction_leaves_nothing(location):
    cat = open_at(location)
    ids = fill(cat, 10)
    with pytest.raises(RuntimeError):
        with cat.transaction():
            cat.vectors.put_vectors(ids, unit(10, seed=5), "new", "old")
            cat.state.set_state(cat.state.ACTIVE_MODEL, "new")
            raise RuntimeError("killed between two statements")
    assert cat.vectors.count_vectors("new", "old") == 0 and cat.models.active_model == "old"
    assert cat.vectors.space_version("old") == 1
    cat.close()


@fast
def test_put_vectors_bumps_the_version_once_and_every_row_gets_it(location):
    """One put_vectors call: the space's version bumped once, even with no rows or with more
    rows than one statement takes (PostgreSQL: pg.PUT_ROWS_AT_ONCE), every row written with
    it, the float16 bytes the codec makes, and the uncertainties as given."""
    from search.storage.catalog import encode_vectors

    cat = open_at(location)
    ids = fill(cat, 2500, dim=8)
    assert cat.vectors.space_version("old") == 1
    with cat.transaction():
        cat.vectors.put_vectors([], np.zeros((0, 8), np.float32), "new", "old")
    assert cat.vectors.space_version("old") == 2 and cat.vectors.count_vectors("new", "old") == 0
    v = unit(2500, 8, seed=3)
    with cat.transaction():
        cat.vectors.put_vectors(ids, v, "new", "old", origin="map", uncertainty=np.arange(2500.0))
    assert cat.vectors.space_version("old") == 3
    rows = cat.conn.db.execute("SELECT image_id, seq, vector, origin, uncertainty, dim, space "
                               "FROM vectors WHERE model = 'new' ORDER BY image_id").fetchall()
    assert [r[0] for r in rows] == ids and {r[1] for r in rows} == {3}
    assert [bytes(r[2]) for r in rows] == encode_vectors(v)
    assert {(r[3], r[5], r[6]) for r in rows} == {("map", 8, "old")}
    assert [r[4] for r in rows] == list(np.arange(2500.0))
    with cat.transaction():  # written again: replaced in place, the next version, no origin
        cat.vectors.put_vectors(ids[:3], v[:3], "new", "old")
    again = cat.conn.db.execute("SELECT seq, origin, uncertainty FROM vectors WHERE model = 'new' "
                                "AND image_id = ?", [ids[0]]).fetchone()
    assert tuple(again) == (4, None, None) and cat.vectors.count_vectors("new", "old") == 2500
    cat.close()


@fast
def test_a_postgresql_catalog_stores_vectors_uncompressed(pg_server):
    """New catalogs are created with pg.VECTOR_STORAGE; one created before it gets it when
    opened (its rows still read back), and one whose vectors table another session is reading
    opens at once as it is (the next open sets it)."""
    import psycopg

    from search.storage.catalog.pg import VECTOR_STORAGE_SET

    url = pg_server.new_database()
    cat = open_at(url)
    ids = fill(cat, 5)
    assert cat.conn.db.execute(VECTOR_STORAGE_SET).fetchone()[0] is True
    cat.conn.db.execute("ALTER TABLE vectors ALTER COLUMN vector SET STORAGE EXTENDED")  # as before
    assert cat.conn.db.execute(VECTOR_STORAGE_SET).fetchone()[0] is False
    cat.close()
    with psycopg.connect(url) as other:  # a reader's open transaction on vectors
        other.execute("SELECT count(*) FROM vectors").fetchone()
        cat = open_at(url, create=False)
        assert cat.conn.db.execute(VECTOR_STORAGE_SET).fetchone()[0] is False
        assert cat.vectors.count_served("old") == 5 and not cat.conn.db.in_transaction
        cat.close()
    cat = open_at(url, create=False)
    assert cat.conn.db.execute(VECTOR_STORAGE_SET).fetchone()[0] is True
    assert sorted(cat.vectors.serving_vectors_of(ids, "old")) == ids
    cat.close()


def _workers(location: str, mode: str, n: int, tags=("a", "b")) -> list[subprocess.Popen]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return [subprocess.Popen([sys.executable, WORKER, location, mode, tag, str(n)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for tag in tags]


def test_two_writer_processes_lose_nothing_and_never_share_a_seq(location):
    """Two processes write one space at once (the second catalog writer of a shared gallery):
    every batch is kept, every write got its own space version, nothing half-written."""
    open_at(location).close()
    procs = _workers(location, "write", 15)
    for p in procs:
        assert p.wait(120) == 0, p.stderr.read()
    cat = open_at(location, create=False)
    assert cat.images.count_images() == 2 * 15 * 4 and cat.vectors.count_served("s") == 120
    seqs = cat.conn.db.execute("SELECT seq, count(*) FROM vectors GROUP BY seq").fetchall()
    assert len(seqs) == 30 and {n for _, n in seqs} == {4} and cat.vectors.space_version("s") == 30
    cat.close()


def test_the_history_race_stays_fixed(location):
    """Two processes each push to the model history 20 times, read and write in one write
    transaction (as `activate` does): all 40 pushes are kept, in each process's order."""
    open_at(location).close()
    for p in _workers(location, "history", 20):
        assert p.wait(120) == 0, p.stderr.read()
    cat = open_at(location, create=False)
    history = cat.models.model_history()
    assert len(history) == 40
    for tag in "ab":
        assert [h for h in history if h.startswith(tag)] == [f"{tag}-{i}" for i in range(20)]
    cat.close()


def test_kill_9_of_a_writer_loses_at_most_the_batch_in_flight(location):
    open_at(location).close()
    proc = _workers(location, "write", 10_000, tags=("k",))[0]
    committed = 0
    while committed < 5:
        committed = int(proc.stdout.readline().split()[1])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cat = open_at(location, create=False)
    images, version = cat.images.count_images(), cat.vectors.space_version("s")
    assert images == 4 * version and version >= committed  # whole batches only
    assert cat.vectors.count_served("s") == images and cat.integrity_check() == ["ok"]
    cat.close()


@fast
def test_migrate_both_ways_is_verified_resumable_and_loses_nothing(tmp_path, pg_server):
    from search.errors import GalleryError
    from search.storage.catalog.transfer import copy_catalog, fingerprint

    src = open_at(str(tmp_path / "a.db"))
    ids = fill(src, 120)
    with src.transaction():
        src.vectors.put_vectors(ids[:30], unit(30, seed=2), "new", "new", origin="map",
                                uncertainty=np.ones(30))
    src.logs.log_event("init", model="old")
    src.logs.log_query("old", "image", "s", "q", 3, [1])
    src.logs.save_job("backfill", {"done": 3})
    src.models.register_model({"name": "old", "space": "old", "dim": 32, "kind": "base"}, "base")
    url = pg_server.new_database()
    dst = open_at(url)
    stop = {"after": 1}

    def interrupt(n):  # a kill after two committed batches
        stop["after"] -= 1
        if stop["after"] < 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        copy_catalog(src, dst, batch=40, tick=interrupt)
    assert dst.images.count_images() == 80  # two batches, the third not begun
    report = copy_catalog(src, dst, batch=40)  # the same command resumes
    assert report["verified"] and report["copied"]["images"] == 40
    assert fingerprint(src) == fingerprint(dst)
    with dst.transaction():  # new rows continue after the copied ids
        new_id = dst.images.add_image({"sha256": "f" * 64, "name": "n"})
    assert new_id == max(ids) + 1
    with pytest.raises(GalleryError, match="already holds a gallery"):
        copy_catalog(src, dst)
    back = open_at(str(tmp_path / "back.db"))
    assert copy_catalog(dst, back)["verified"]
    assert back.images.count_images() == 121 and back.vectors.serving_vectors_of(ids[:1], "new")
    for c in (src, dst, back):
        c.close()


def graceful(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return cli_fork.run(args, timeout=120, cwd=ROOT,
                        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_migrate_catalog_command_both_ways(tmp_path, pg_server):
    home = tmp_path / "g"
    home.mkdir()
    cat = open_at(str(home / "catalog.db"))
    fill(cat, 30)
    cat.close()
    url = pg_server.new_database()
    r = graceful("--home", str(home), "migrate-catalog", url, "--json")
    assert r.returncode == 0, r.stderr
    import json

    report = json.loads(r.stdout)
    assert report["verified"] and report["tables"]["vectors"]["rows"] == 30
    r = graceful("--home", str(home), "--catalog", url, "info", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["images"] == 30 and info["catalog"]["kind"] == "postgresql"
    r = graceful("--home", str(home), "--catalog", url, "migrate-catalog",
                 str(tmp_path / "back.db"))
    assert r.returncode == 0 and "verified 8 tables" in r.stdout, r.stderr
    r = graceful("--home", str(home), "--catalog", url, "migrate-catalog", str(tmp_path / "back.db"))
    assert r.returncode == 1 and "already holds a gallery" in r.stderr


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_bad_catalog_urls_are_one_line_each_and_change_nothing(tmp_path, pg_server):
    home = str(tmp_path / "g")
    gone = f"postgresql://graceful@/nothing?host={tmp_path / 'no-server'}"
    assert "cannot reach the catalog" in _one_line_error(graceful("--home", home, "--catalog",
                                                                  gone, "info"))
    wrong = pg_server.url("postgres", user="locked", password="wrong")
    line = _one_line_error(graceful("--home", home, "--catalog", wrong, "info"))
    assert "refused the credentials" in line and "wrong" not in line  # no password shown
    missing = pg_server.url("no_such_db")
    assert "no database" in _one_line_error(graceful("--home", home, "--catalog", missing, "info"))
    other = pg_server.new_database("other")
    pg_server.psql("CREATE TABLE invoices (id int)", pg_server.name_of(other))
    line = _one_line_error(graceful("--home", home, "--catalog", other, "index", str(tmp_path)))
    assert "belongs to another application" in line and "invoices" in line
    assert pg_server.psql("SELECT string_agg(table_name, ',') FROM information_schema.tables "
                          "WHERE table_schema = 'public'",
                          pg_server.name_of(other)).strip() == "invoices"
    empty = pg_server.new_database()
    assert "no gallery in the catalog" in _one_line_error(
        graceful("--home", home, "--catalog", empty, "info"))
    assert "unknown catalog" in _one_line_error(
        graceful("--home", home, "--catalog", "mysql://x/y", "info"))
    newer = pg_server.new_database()
    open_at(newer).close()
    pg_server.psql("UPDATE graceful_schema SET version = 99", pg_server.name_of(newer))
    assert "newer Graceful" in _one_line_error(graceful("--home", home, "--catalog", newer, "info"))


def test_a_server_that_goes_away_mid_job_is_one_line_and_loses_nothing(tmp_path):
    """The server crashes (immediate shutdown) under a writer: the writer ends with one line;
    after a restart every batch it reported committed is there, and whole."""
    from pg_server import running

    with running(sync_commit=True) as server:
        url = server.new_database()
        open_at(url).close()
        proc = _workers(url, "write", 100_000, tags=("w",))[0]
        committed = 0
        while committed < 10:
            committed = int(proc.stdout.readline().split()[1])
        server.crash()
        for line in proc.stdout:
            committed = int(line.split()[1])
        assert proc.wait(60) == 1
        err = [x for x in proc.stderr.read().splitlines() if x.strip()]
        assert len(err) == 1 and "cannot reach the catalog" in err[0], err
        server.start()
        cat = open_at(url, create=False)
        images, version = cat.images.count_images(), cat.vectors.space_version("s")
        assert version >= committed and images == 4 * version
        cat.close()
        from search.storage.catalog.pg import release

        release(url)
