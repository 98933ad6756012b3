"""Beyond one process: embedding jobs on a real local Ray cluster (`--ray`), and the Milvus
store's own duties (consistency with the catalog on open, moving a gallery between stores).
The behavioural tests that run on both stores live with their subjects (ingest, upgrade, CLI),
parametrised by the `store` fixture.

The Ray jobs run real CLI processes on a real cluster, with the numpy fakes as the models
(tests/fakes.py, given as GRACEFUL_MODELS the way a user gives their own embedders, so the
provider travels to the workers); the kill -9 backfill ships a real checkpoint to real torch
workers."""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import cli_fork
import numpy as np
import pytest
from fakes import ALBUMS, FakeModels, cli_env, make_photos, open_fake, photo_bytes

from search.api import Gallery, GalleryError

pytestmark = pytest.mark.slow  # a Ray cluster and Milvus Lite

SHIPPED = "lite2-compat-lite0"
CLI = [sys.executable, "-m", "search.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(home: Path, *args, check: bool = True, fakes: bool = False) -> subprocess.CompletedProcess:
    """The CLI on `home`, on the installed models or (`fakes`) the numpy fakes."""
    env = cli_env(home) if fakes else {**os.environ, "GRACEFUL_HOME": str(home)}
    r = cli_fork.run(args, env=env, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr[-2000:]
    return r


def vectors_of(home: Path, model: str) -> dict[str, np.ndarray]:
    with sqlite3.connect(home / "catalog.db") as db:
        return {sha: np.frombuffer(v, np.float16).astype(np.float32) for sha, v in db.execute(
            "SELECT i.sha256, v.vector FROM images i JOIN vectors v ON v.image_id = i.id "
            "WHERE v.model = ?", [model])}


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    """The same vectors, as stored (float16: a 32-d fake's norm is 1 only to about 3e-4)."""
    return a.keys() == b.keys() and all(np.abs(a[k] - b[k]).max() < 1e-3 for k in a)


@pytest.mark.slow
def test_ray_jobs_write_what_the_plain_path_writes(ray_cluster, home, tmp_path):
    """index, backfill and reembed on Ray workers: the same vectors and image facts as the
    plain path in this process, bad files reported by the workers. (The workers only embed; the
    store-parametrised tests write the same jobs into Milvus.)"""
    photos = make_photos(tmp_path / "photos", ALBUMS[:3], per_album=4)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    plain = tmp_path / "plain"  # the reference: the plain path, in this process
    ref = open_fake(plain, store="faiss")
    ref.add([photos])

    report = json.loads(cli(home, "index", photos, "--ray", ray_cluster,
                            "--ray-workers", "2", "--json", fakes=True).stdout)
    assert report["added"] == 12 and report["skipped"] == 1
    assert "broken.jpg" in report["skipped_files"][0]["path"]
    ray_v, plain_v = vectors_of(home, "fake-a"), vectors_of(plain, "fake-a")
    assert ray_v.keys() == plain_v.keys() and len(ray_v) == 12
    assert same(ray_v, plain_v)
    with sqlite3.connect(home / "catalog.db") as a, sqlite3.connect(plain / "catalog.db") as b:
        facts = "SELECT sha256, width, height, format, album FROM images ORDER BY sha256"
        assert a.execute(facts).fetchall() == b.execute(facts).fetchall()
    info = json.loads(cli(home, "info", "--json", fakes=True).stdout)
    assert info["runtimes"]["fake-a"] == ["numpy"]  # what the workers said computed them

    cli(home, "upgrade", "fake-a2", fakes=True)  # a compatible upgrade, then its backfill
    ref.upgrade("fake-a2")
    out = json.loads(cli(home, "backfill", "--ray", ray_cluster, "--ray-workers", "1", "--json",
                         fakes=True).stdout)  # (two workers: the index above)
    assert out["done"] == 12 and out["status"]["fraction_backfilled"] == 1.0
    assert ref.backfill().done == 12
    ref.close()
    ray_v, plain_v = vectors_of(home, "fake-a2"), vectors_of(plain, "fake-a2")
    assert len(ray_v) == 12 and same(ray_v, plain_v)

    out = json.loads(cli(home, "reembed", "fake-b", "--ray", ray_cluster, "--ray-workers", "1",
                         "--json", fakes=True).stdout)
    assert out["done"] == 12 and out["switched"]
    query = sorted((photos / "blue").iterdir())[0]
    hits = json.loads(cli(home, "search", query, "-k", "3", "--json", fakes=True).stdout)["results"]
    assert hits[0]["name"] == query.name and hits[0]["embedded_by"] == "fake-b"


@pytest.mark.slow
def test_a_numpy_providers_ray_workers_never_import_torch(ray_cluster):
    """A provider's models travel to the workers with the provider (pickled with its state, its
    module found where the caller imported it): a numpy provider's workers embed what the
    caller would, report bad photos, and never import torch."""
    import ray

    from models.imageio import decode
    from models.ray_embed import ModelPackage, RayEmbedPool

    models = FakeModels()
    pool = RayEmbedPool(ModelPackage.of("fake-b-bridge", None, models), ray_cluster, workers=1)
    try:
        actor = pool.actors[0]
        assert pool.runtimes == ["numpy"]
        assert ray.get(actor.imported.remote("fakes")) is True
        assert ray.get(actor.imported.remote("torch")) is False
        items = [("red", photo_bytes("red", 1)), ("bad", b"not a photo"),
                 ("blue", photo_bytes("blue", 2))]
        [batch] = list(pool.map(items, batch_size=4))
        assert ray.get(actor.imported.remote("torch")) is False  # nor did embedding
    finally:
        pool.close()
    assert batch.keys == ["red", "blue"] and [k for k, _ in batch.failed] == ["bad"]
    model = models.load("fake-b-bridge")
    here = model.embed_images([decode(data, target_size=model.info.image_size).image
                               for _, data in (items[0], items[2])])
    assert np.allclose(batch.vectors, here, atol=1e-6)


@pytest.mark.slow
def test_kill_9_during_a_ray_backfill_then_resume(ray_cluster, album_gallery, run_and_kill):
    home = album_gallery  # a copy of the session's 56-photo lite0 gallery (conftest)
    shipped_copies = set(Path(tempfile.gettempdir()).glob("graceful-model-*"))
    g = Gallery.open(home)
    n = g.core.catalog.images.count_images()
    assert n == 56
    g.upgrade(SHIPPED)
    g.close()
    env = {**os.environ, "GRACEFUL_HOME": str(home)}
    rc = run_and_kill([*CLI, "backfill", "--ray", ray_cluster, "--ray-workers", "1",
                       "--batch-size", "4"], env,
                      lambda: len(vectors_of(home, SHIPPED)) >= 12, timeout=300)
    assert rc == -signal.SIGKILL, "the backfill finished before it could be killed"
    with sqlite3.connect(home / "catalog.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    partial = len(vectors_of(home, SHIPPED))
    assert 12 <= partial < n
    out = json.loads(cli(home, "backfill", "--ray", ray_cluster, "--ray-workers", "1",
                         "--json").stdout)
    assert out["done"] == n - partial  # resumed: nothing re-embedded twice
    assert len(vectors_of(home, SHIPPED)) == n
    g = Gallery.open(home)
    assert g.core.index().ntotal == n
    g.close()
    # each worker's copy of the shipped checkpoint goes once loaded, though workers end by SIGKILL
    assert set(Path(tempfile.gettempdir()).glob("graceful-model-*")) <= shipped_copies


def test_without_ray_or_milvus_nothing_imports_them(home, few_photos):
    """The embedded default stays lean: a FAISS gallery's jobs import neither Ray nor pymilvus."""
    code = (
        "import sys; from search import Gallery; "
        f"g = Gallery.open({str(home)!r}, store='faiss'); g.add([{str(few_photos / 'airplanes')!r}]); "
        "g.backfill(); g.search(1, k=2); g.info(); g.close(); "
        "bad = [m for m in ('ray', 'pymilvus', 'milvus_lite') if m in sys.modules]; "
        "assert not bad, bad"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


# -- the Milvus store's own duties ---------------------------------------------------------

@pytest.fixture
def milvus_gallery(home, few_photos) -> Gallery:
    pytest.importorskip("milvus_lite", reason="graceful[milvus] is not installed")
    g = Gallery.open(home, create=True, store="milvus")
    g.add([few_photos])
    return g


@pytest.mark.slow
def test_milvus_collection_is_checked_against_the_catalog_on_open(milvus_gallery):
    g = milvus_gallery
    name = g.core.vector_store.collection("lite0")
    assert g.core.index().ntotal == 12 and g.info().vector_store["kind"] == "milvus"

    g.core.index().remove([1, 2])  # someone deleted rows behind the catalog's back
    g.close()
    g = Gallery.open(g.home)
    assert g.check().findings  # check names the problem before anything rebuilds it
    report = {f.check: f for f in g.check().findings if f.check == "index"}
    assert report["index"].status == "problem" and "10 vectors" in report["index"].detail
    assert g.core.index().ntotal == 12 and any("Milvus collection" in n for n in g.core.notices)

    g.core.vector_store.client.drop_collection(name)  # the collection lost entirely
    g.close()
    g = Gallery.open(g.home)
    assert g.core.index().ntotal == 12
    scores, ids = g.core.index().search(g.core.index().vectors([3]), 1)
    assert ids[0, 0] == 3 and scores[0, 0] > 0.999
    g.close()


@pytest.mark.slow
def test_moving_a_gallery_between_stores_keeps_every_search(home, few_photos):
    pytest.importorskip("milvus_lite", reason="graceful[milvus] is not installed")
    g = Gallery.open(home, create=True)
    g.add([few_photos])
    query = sorted((few_photos / "Motorbikes").iterdir())[1]
    before = [h.image_id for h in g.search(query, k=12).hits]
    with pytest.raises(GalleryError, match="reindex --store milvus"):
        g.vectors.choose_store("milvus")  # a gallery with vectors moves only on purpose
    g.close()

    r = cli(home, "reindex", "--store", "milvus", "--milvus-uri", "http://127.0.0.1:1", check=False)
    assert r.returncode == 1 and "cannot reach Milvus at http://127.0.0.1:1" in r.stderr
    g = Gallery.open(home)  # a store that could not be filled is not kept
    assert g.core.vector_store.kind == "faiss" and [h.image_id for h in g.search(query, k=12).hits] == before
    g.close()
    r = cli(home, "reindex", "--store", "milvus")
    assert "(milvus store)" in r.stdout
    g = Gallery.open(home)
    assert g.core.vector_store.kind == "milvus" and (home / "milvus.db").is_dir()
    assert [h.image_id for h in g.search(query, k=12).hits] == before
    g.close()
    cli(home, "reindex", "--store", "faiss")
    g = Gallery.open(home)
    assert g.core.vector_store.kind == "faiss"
    assert [h.image_id for h in g.search(query, k=12).hits] == before
    g.close()


@pytest.mark.slow
def test_milvus_lite_file_held_by_another_process_is_one_line(milvus_gallery):
    g = milvus_gallery
    g.core.index()  # this process holds the Milvus Lite file
    env = {**os.environ, "GRACEFUL_HOME": str(g.home), "GRACEFUL_DB_TIMEOUT": "1"}
    r = cli_fork.run(["info"], env=env, timeout=120)
    assert r.returncode == 1 and "open in another process" in r.stderr
    assert "Traceback" not in r.stderr
    g.close()
    r = cli_fork.run(["info", "--json"], env=env, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["index"]["vectors"] == 12
