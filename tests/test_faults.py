"""Fault injection, one test per fault a hostile or unlucky user hit (issue 14; the list and
outcomes are in docs/RELIABILITY.md): real processes, real files, the exact message, the exit
code, right results afterwards, nothing lost."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import cli_fork
import pytest
from click.testing import CliRunner
from PIL import Image

from search.cli import cli
from search.storage.catalog import SCHEMA_VERSION


def run(home, *args):
    return CliRunner().invoke(cli, ["--home", str(home), *map(str, args)], catch_exceptions=False)


def graceful(home, *args, timeout=180):
    """The console entry point in a process of its own (tests/cli_fork.py)."""
    return cli_fork.run(args, env={**os.environ, "GRACEFUL_HOME": str(home)}, timeout=timeout)


def n_images(home: Path) -> int:
    with sqlite3.connect(home / "catalog.db") as db:
        return db.execute("SELECT count(*) FROM images").fetchone()[0]


@pytest.fixture
def gallery12(home, few_photos, gallery_snapshot) -> Path:
    """A private copy of a lite0 gallery of the 12 few_photos, indexed once per session by
    `graceful index`."""
    from conftest import copy_gallery

    def build(dest: Path) -> None:
        r = run(dest, "index", few_photos)
        assert r.exit_code == 0, r.output

    return copy_gallery(gallery_snapshot("few-cli", build), home)


def test_devices_fifos_and_system_folders_are_refused(home, few_photos, tmp_path):
    r = graceful(home, "index", "/dev/zero", timeout=60)
    assert r.returncode == 1 and "/dev/zero: a system folder or device, not photos" in r.stderr
    r = graceful(home, "index", "/proc", timeout=60)
    assert r.returncode == 1 and "/proc: a system folder or device" in r.stderr
    assert "Traceback" not in r.stderr and not (home / "catalog.db").exists()

    folder = tmp_path / "mixed"
    shutil.copytree(few_photos / "sunflower", folder)
    os.mkfifo(folder / "x.jpg")  # would block a reader forever
    r = graceful(home, "index", folder / "x.jpg", timeout=60)
    assert r.returncode == 1 and "not a regular file" in r.stderr
    r = graceful(home, "index", folder, "--json", timeout=120)  # the folder walk passes it over
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["added"] == 4


@pytest.mark.slow  # real processes racing (or a real full disk): the slow tier
def test_concurrent_creation_runs_the_migration_once(tmp_path):
    """Two processes creating the same gallery at once: both open it, no 'already exists'."""
    code = ("import sys; from search.storage.catalog import Catalog, Db; c = Catalog(Db(sys.argv[1])); "
            "print(c.schema_version)")
    for n in range(4):
        db = tmp_path / f"c{n}.db"
        procs = [subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
        outs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], outs
        assert all(o[0].strip() == str(SCHEMA_VERSION) for o in outs)


@pytest.mark.slow  # real processes racing (or a real full disk): the slow tier
def test_two_index_runs_creating_one_gallery_at_once(home, few_photos):
    env = {**os.environ, "GRACEFUL_HOME": str(home), "GRACEFUL_THREADS": "1"}
    done = cli_fork.run_together([["index", few_photos / c] for c in ("airplanes", "Motorbikes")],
                                 env)
    assert [r.returncode for r in done] == [0, 0], [r.stderr for r in done]
    assert n_images(home) == 8
    r = run(home, "check", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["ok"]


def test_a_busy_gallery_waits_then_says_so(gallery12, few_photos):
    """Another process holds the write lock: a writer waits (GRACEFUL_DB_TIMEOUT), then one line."""
    holder = sqlite3.connect(gallery12 / "catalog.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        env = {**os.environ, "GRACEFUL_HOME": str(gallery12), "GRACEFUL_DB_TIMEOUT": "1"}
        r = cli_fork.run(["albums", "rename", "sunflower", "x"], env=env, timeout=120)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert "the gallery is busy" in r.stderr
        r = cli_fork.run(["albums"], env=env, timeout=120)
        assert r.returncode == 0 and "sunflower" in r.stdout  # readers are not blocked (WAL)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert run(gallery12, "albums", "rename", "sunflower", "x").exit_code == 0


def test_a_small_file_declaring_a_huge_image_is_refused_before_decoding(home, few_photos, tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (15000, 15000)).save(bomb, optimize=True)  # ~30 KB on disk, 225 MP
    assert bomb.stat().st_size < 300_000
    r = run(home, "index", bomb, few_photos / "airplanes", "--json")
    assert r.exit_code == 0
    report = json.loads(r.stdout)
    assert report["added"] == 4
    assert report["skipped_files"] == [{"path": str(bomb), "reason": "image too large (15000x15000 "
                                        "= 225 MP > 64 MP for PNG)"}]


def test_flipped_bytes_in_the_index_file_are_caught_and_rebuilt(gallery12, few_photos):
    index_file = next((gallery12 / "index").glob("*.faiss"))
    data = bytearray(index_file.read_bytes())
    for pos in range(len(data) - 4000, len(data) - 3000, 7):  # inside the vectors, size unchanged
        data[pos] ^= 0xFF
    index_file.write_bytes(bytes(data))
    query = sorted((few_photos / "Motorbikes").iterdir())[0]
    r = graceful(gallery12, "search", query, "-k", "3", "--json")
    assert r.returncode == 0, r.stderr
    assert "note: the lite0 index file was damaged (checksum mismatch): rebuilt it" in r.stderr
    top = json.loads(r.stdout)["results"][0]
    assert top["name"] == query.name and 0.999 < top["score"] < 1.001
    r = run(gallery12, "check", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["ok"]


def test_damaged_or_emptied_catalog_is_one_clear_line(gallery12):
    db = gallery12 / "catalog.db"
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    original = db.read_bytes()
    db.write_bytes(b"this is not sqlite" * 1000)
    r = graceful(gallery12, "info")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "the catalog (catalog.db) is damaged" in r.stderr and "Restore catalog.db from a backup" in r.stderr
    db.write_bytes(b"")
    r = graceful(gallery12, "search", "--id", "1")
    assert r.returncode == 1 and "is empty (0 bytes) but the gallery holds photos" in r.stderr
    assert db.stat().st_size == 0  # nothing was written over it
    db.write_bytes(original)
    assert graceful(gallery12, "info").returncode == 0


def test_a_photo_missing_from_the_store(gallery12, few_photos):
    victim = sorted((few_photos / "sunflower").iterdir())[0]
    other = sorted((few_photos / "airplanes").iterdir())[0]
    assert run(gallery12, "search", other, "-k", "1").exit_code == 0
    g_out = json.loads(run(gallery12, "search", victim, "-k", "1", "--json").stdout)
    hit = g_out["results"][0]
    Path(hit["path"]).unlink()
    r = run(gallery12, "search", "--id", hit["image_id"])
    assert r.exit_code == 1 and f"photo #{hit['image_id']} ({victim.name}) is missing" in r.output
    assert "graceful check --repair" in r.output
    r = run(gallery12, "compare", "--log", "--old", "lite0", "--new", "lite0")
    assert r.exit_code == 0, r.output  # the logged search of that photo is left out, with a note
    assert r.output.startswith("1 queries") and f"photo #{hit['image_id']} is missing" in r.output

    r = run(gallery12, "check", "--json")
    assert r.exit_code == 1
    problems = [f for f in json.loads(r.stdout)["findings"] if f["status"] == "problem"]
    assert len(problems) == 1 and "is missing" in problems[0]["detail"]
    r = run(gallery12, "check", "--repair")
    assert r.exit_code == 0 and "re-imported from" in r.output
    assert Path(hit["path"]).read_bytes() == victim.read_bytes()

    # indexing the original again also restores a lost file
    Path(hit["path"]).unlink()
    r = run(gallery12, "index", victim, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["restored"] == 1
    assert Path(hit["path"]).is_file()


def test_backfill_says_when_store_files_are_missing(gallery12):
    r = run(gallery12, "upgrade", "lite2-compat-lite0")
    assert r.exit_code == 0, r.output
    for p in list((gallery12 / "images").rglob("*.jpg"))[:3]:
        p.unlink()
    r = run(gallery12, "backfill")
    assert r.exit_code == 1
    assert "re-embedded 9 photos" in r.output and "3 photos could not be re-embedded" in r.output


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here to fill up: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow  # real processes racing (or a real full disk): the slow tier
def test_disk_full(tiny_disk, few_photos, gallery_snapshot):
    from conftest import copy_gallery, ingested

    # a 4-photo gallery (indexed once per session) on the small disk
    home = copy_gallery(gallery_snapshot("airplanes", ingested([few_photos / "airplanes"])),
                        tiny_disk / "g")
    db = sqlite3.connect(home / "catalog.db")  # a closed gallery: everything in catalog.db
    assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM images").fetchone()[0] == 4
    db.close()
    for suffix in ("-wal", "-shm"):  # so the next open must create (and size) the -shm
        Path(f"{home / 'catalog.db'}{suffix}").unlink(missing_ok=True)
    filler = tiny_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    for chunk in (65536, 4096, 1):  # to the last byte: the WAL's -shm cannot even be sized
        try:
            while True:
                os.write(fd, b"\0" * chunk)
        except OSError:
            pass
    os.close(fd)
    assert os.statvfs(tiny_disk).f_bavail == 0
    r = graceful(home, "info")
    assert r.returncode == 0, r.stderr
    r = graceful(home, "albums")
    assert r.returncode == 0 and "airplanes" in r.stdout, r.stderr
    query = sorted((few_photos / "airplanes").iterdir())[0]
    r = graceful(home, "search", query, "-k", "2")
    assert r.returncode == 0, r.stderr
    assert "2 results with lite0" in r.stdout
    r = graceful(home, "index", few_photos / "Motorbikes")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "the disk is full" in r.stderr and "free some space" in r.stderr
    # counted by another process: a connection of this one would keep the -shm alive
    assert json.loads(graceful(home, "info", "--json").stdout)["images"] == 4
    filler.unlink()
    r = graceful(home, "index", few_photos / "Motorbikes", "--json")
    assert r.returncode == 0, r.stderr
    assert n_images(home) == 8 and json.loads(r.stdout)["added"] == 4


def test_upgrade_by_path_copies_the_checkpoint_in(gallery12, tmp_path, few_photos, make_checkpoint):
    outside = tmp_path / "elsewhere" / "mine.safetensors"
    outside.parent.mkdir()
    make_checkpoint(outside, dim=1280, name="my-model")
    r = run(gallery12, "upgrade", outside, "--force")
    assert r.exit_code == 0, r.output
    assert (gallery12 / "models" / "my-model.safetensors").read_bytes() == outside.read_bytes()
    outside.unlink()
    query = sorted((few_photos / "airplanes").iterdir())[0]
    assert run(gallery12, "search", query, "-k", "2").exit_code == 0
    assert run(gallery12, "index", few_photos).exit_code == 0
    assert json.loads(run(gallery12, "info", "--json").stdout)["active_model"] == "my-model"


def test_k_must_be_positive_and_hosts_are_pinned(gallery12, few_photos):
    query = next(few_photos.rglob("*.jpg"))
    for k in ("0", "-1"):
        r = run(gallery12, "search", query, "-k", k)
        assert r.exit_code == 2 and "x>=1" in r.output
    import tomllib

    config = tomllib.loads((Path(__file__).parent.parent / ".streamlit" / "config.toml").read_text())
    assert set(config["server"]["allowedHosts"]) >= {"localhost", "127.0.0.1"}


def test_a_bad_model_for_a_new_gallery_writes_nothing(home, few_photos, tmp_path, make_checkpoint):
    bad = tmp_path / "bad.safetensors"
    make_checkpoint(bad, in_dim=512, name="bad")  # its head does not fit lite0's features
    r = run(home, "index", few_photos, "--model", bad)
    assert r.exit_code == 1 and "expects 512-d" in r.output
    assert not home.exists() or not (home / "catalog.db").exists()


def test_preflight_never_checks_a_model_against_its_own_vectors(gallery12):
    """After a partial backfill the pre-flight samples photos still holding old vectors."""
    from search.api import Gallery
    from search.ops import backfill as bf
    from search.ops.preflight import preflight

    assert run(gallery12, "upgrade", "lite2-compat-lite0").exit_code == 0
    g = Gallery.open(gallery12)
    bf.backfill(g.core, "random", limit=8)
    p = preflight(g.core, g.core.load_model("lite2-compat-lite0"), sample=12)
    assert p.sample == 4 and p.mean_cosine < 0.99  # the 4 photos still on lite0 vectors
    g.close()


# -- issue 20: what the product opens is checked before it is trusted -------------------------

def forged_checkpoint(path: Path, tensors=None, raw_header: bytes | None = None, **header) -> Path:
    """A safetensors file with a Graceful header whose fields are overridden by `header` (any
    JSON values), or with `raw_header` as its header bytes verbatim."""
    import struct

    import numpy as np
    from safetensors.numpy import save

    from models.checkpoint import CheckpointMeta

    if raw_header is not None:
        path.write_bytes(struct.pack("<Q", len(raw_header)) + raw_header)
        return path
    meta = CheckpointMeta(name="forged", backbone="lite0", dim=8, space="lite0",
                          compatible_with=["lite0"], method="bct",
                          head={"type": "linear", "in_dim": 1280, "out_dim": 8})
    values = meta.to_header()
    values.update({k: json.dumps(v) for k, v in header.items()})
    if tensors is None:
        tensors = {"proj.weight": np.zeros((8, 1280), np.float16), "proj.bias": np.zeros(8, np.float16)}
    path.write_bytes(save(tensors, metadata=values))
    return path


def test_a_checkpoint_header_is_validated_before_anything_is_written(home, tmp_path):
    """A checkpoint's own name is not a path; its header, head spec and tensor table are
    checked (with a memory bound) before it is copied in; refusals are one line."""
    import numpy as np

    from search.api import Gallery, GalleryError

    outside = tmp_path / "outside"
    outside.mkdir()
    g = Gallery.open(home)
    escapes = ["../escaped", "../../outside/escaped", str(outside / "abs"), "a/b", "..",
               "x" * 65, "ok\n"]
    forged = {f"name{i}": dict(name=n) for i, n in enumerate(escapes)}
    forged.update({
        "dim": dict(dim="abc"), "head-list": dict(head=[]), "compat": dict(compatible_with=5),
        "metrics": dict(metrics="x"), "classes": dict(classes={}), "space": dict(space={}),
        "head-type": dict(head={"type": "exec", "in_dim": 1280, "out_dim": 8}),
        "head-dims": dict(head={"type": "linear", "in_dim": "1280", "out_dim": 8}),
        "head-huge": dict(head={"type": "mlp", "in_dim": 1280, "out_dim": 8, "hidden": 10**8}),
        "dim-mismatch": dict(dim=16),
    })
    cases = {k: forged_checkpoint(tmp_path / f"{k}.safetensors", **v) for k, v in forged.items()}
    cases["shapes"] = forged_checkpoint(tmp_path / "shapes.safetensors",
                                        tensors={"proj.weight": np.zeros((8, 100), np.float16)})
    cases["header-bomb"] = tmp_path / "header-bomb.safetensors"
    cases["header-bomb"].write_bytes((2**40).to_bytes(8, "little") + b"{}")
    cases["tensor-bomb"] = forged_checkpoint(tmp_path / "tensor-bomb.safetensors", raw_header=json.dumps(
        {"proj.weight": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 4 * 10**10]}}
    ).encode())
    cases["not-json"] = forged_checkpoint(tmp_path / "not-json.safetensors", raw_header=b"\xff{[")
    for what, path in cases.items():
        with pytest.raises(GalleryError) as e:
            g.models.import_checkpoint(str(path))
        assert "\n" not in str(e.value) and str(path) in str(e.value), (what, e.value)
    assert "is not a plain name" in str(pytest.raises(GalleryError, g.models.import_checkpoint,
                                                      str(cases["name0"])).value)
    assert not list(outside.iterdir()) and not (tmp_path / "escaped.safetensors").exists()
    assert not (home / "models").exists() or not list((home / "models").iterdir())
    g.close()
    r = run(home, "upgrade", cases["name1"])  # the CLI: one line, exit 1, nothing written
    assert r.exit_code == 1 and "is not a plain name" in r.output and "Traceback" not in r.output
    assert not list(outside.iterdir())


def test_bad_checkpoint_files_in_the_gallery_are_listed_as_unreadable(home, tmp_path, monkeypatch):
    models = home / "models"
    models.mkdir(parents=True)
    forged_checkpoint(models / "typed.safetensors", space={}, dim="abc")
    (models / "bomb.safetensors").write_bytes((2**40).to_bytes(8, "little"))
    (models / "empty.safetensors").write_bytes(b"")
    r = graceful(home, "models", timeout=60)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    lines = {line.split()[0]: line for line in r.stdout.splitlines()}
    assert "unreadable" in lines["typed"] and "space is dict, not a string" in r.stdout
    assert "unreadable" in lines["bomb"] and "unreadable" in lines["empty"] and "lite0" in lines
    rows = json.loads(graceful(home, "models", "--json", timeout=60).stdout)
    assert {r["name"] for r in rows if r["kind"] == "unreadable"} == {"typed", "bomb", "empty"}

    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("GRACEFUL_HOME", str(home))
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"),
                           default_timeout=120)
    at.run()
    at.switch_page("search/ui/pages/models_page.py").run()
    assert not at.exception, at.exception
    assert any("typed.safetensors" in w.value for w in at.warning)


def assert_history_matches_events(home: Path) -> None:
    """Replaying the model events (init, upgrade, rollback, reembed) gives the stored history
    and active model, and every rollback undid the newest step."""
    with sqlite3.connect(home / "catalog.db") as db:
        events = [(k, json.loads(d)) for k, d in
                  db.execute("SELECT kind, detail FROM events ORDER BY id")]
        state = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM state")}
    active, stack = None, []
    for kind, d in events:
        if kind == "rollback":
            assert d["previous"] == active and stack and stack[-1] == d["model"], (events, stack)
            active = stack.pop()
        elif "model" in d and "previous" in d:
            assert d["previous"] == active, events
            if active and active != d["model"]:
                stack.append(active)
            active = d["model"]
    assert (state["active_model"], state.get("model_history", [])) == (active, stack), events


def test_a_rollback_racing_an_upgrade_keeps_the_history(gallery12, make_checkpoint, monkeypatch):
    """The upgrade commits while the rollback loads its model: the rollback sees it under the
    write lock and undoes the newest step instead of writing back a stale history."""
    from search.api import Gallery
    from search.ops.upgrade import rollback, upgrade

    for name in ("tiny-a", "tiny-b"):
        make_checkpoint(gallery12 / "models" / f"{name}.safetensors", dim=1280, name=name)
    g1, g2 = Gallery.open(gallery12), Gallery.open(gallery12)
    upgrade(g2.core, "tiny-a", force=True)  # history [lite0], active tiny-a
    load = g1.core.load_model
    raced = []

    def load_while_another_process_upgrades(name):
        if not raced:
            raced.append(upgrade(g2.core, "tiny-b", force=True).model)  # history [lite0, tiny-a]
        return load(name)

    monkeypatch.setattr(g1.core, "load_model", load_while_another_process_upgrades)
    r = rollback(g1.core)
    assert raced == ["tiny-b"] and (r.previous, r.model) == ("tiny-b", "tiny-a")
    assert g1.active_model == "tiny-a" and g1.core.catalog.models.model_history() == ["lite0"]
    assert_history_matches_events(gallery12)
    g1.close(), g2.close()


@pytest.mark.slow  # real processes racing (or a real full disk): the slow tier
def test_concurrent_upgrades_and_rollbacks_keep_the_history(fake_gallery):
    """Real processes: an upgrade and a rollback started at the same time, several rounds (the
    numpy fakes as the gallery's models, through GRACEFUL_MODELS: the race is the catalog's)."""
    home = fake_gallery.home
    fake_gallery.upgrade("fake-a2")
    fake_gallery.close()
    from fakes import cli_env

    env = cli_env(home, GRACEFUL_THREADS="1")
    for target in ("fake-a-head", "fake-a2", "fake-a"):
        done = cli_fork.run_together([["upgrade", target, "--force"], ["rollback"]], env)
        assert all("Traceback" not in r.stderr for r in done), [r.stderr for r in done]
        assert_history_matches_events(home)
    check = cli_fork.run(["check"], env=env, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_reader_checks_the_file_before_reading_it(gallery12, few_photos, tmp_path, monkeypatch):
    """search FILE, compare --queries DIR, train --data DIR and check --repair read through the
    one safe reader: regular files only, size checked with fstat first; FIFOs never hang."""
    from models import registry

    big = tmp_path / "big.jpg"
    with open(big, "wb") as f:
        f.truncate(201 * 2**20)  # sparse: nothing is really written
    os.mkfifo(tmp_path / "pipe.jpg")

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the file was checked")

    monkeypatch.setattr(registry, "load", no_model)
    r = run(gallery12, "search", big)
    assert r.exit_code == 1 and "file too large (201 MiB > 200 MiB)" in r.output, r.output
    r = run(gallery12, "search", tmp_path / "pipe.jpg")
    assert r.exit_code == 1 and "not a regular file" in r.output, r.output
    monkeypatch.undo()

    # compare --queries and train --data folders with a FIFO named like a photo: passed over
    folder = tmp_path / "queries"
    for c in ("airplanes", "sunflower"):
        shutil.copytree(few_photos / c, folder / c)
        os.mkfifo(folder / c / "zz-pipe.jpg")
    code = ("import sys; from pathlib import Path; from search.ops.compare import queries_from_folder; "
            "from models.imagefolder import scan; from models.features import file_shas; "
            "q = queries_from_folder(Path(sys.argv[1])); d = scan(sys.argv[1]); "
            "print(len(q), len(file_shas(d.files)), sorted({x.label for x in q}))")
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.split()[:2] == ["8", "8"], out.stderr

    # check --repair: the photo's original path is now a FIFO: a problem, not a hang
    originals = tmp_path / "originals"
    shutil.copytree(few_photos / "sunflower", originals)
    home = tmp_path / "g2"
    assert run(home, "index", originals).exit_code == 0
    store_file = next((home / "images").rglob("*.*"))
    store_file.unlink()
    for f in originals.iterdir():
        f.unlink()
        os.mkfifo(f)
    r = graceful(home, "check", "--repair", "--json", timeout=120)
    assert r.returncode == 1, r.stderr
    problems = [f for f in json.loads(r.stdout)["findings"] if f["status"] == "problem"]
    assert len(problems) == 1 and "is gone or changed" in problems[0]["detail"]


def test_links_out_of_the_import_roots_are_refused(home, few_photos, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from search.storage.files import collect_files

    root = tmp_path / "root"
    shutil.copytree(few_photos / "sunflower", root / "album")
    secret = tmp_path / "private" / "secret.jpg"
    secret.parent.mkdir()
    shutil.copy(next((few_photos / "airplanes").iterdir()), secret)
    (root / "album" / "link.jpg").symlink_to(secret)
    (root / "album" / "inside.jpg").symlink_to(root / "album" / sorted(os.listdir(root / "album"))[0])
    outside = []
    files = collect_files([root], [root.resolve()], outside)
    assert outside == [root / "album" / "link.jpg"] and len(files) == 5

    monkeypatch.setenv("GRACEFUL_HOME", str(home))
    monkeypatch.setenv("GRACEFUL_IMPORT_ROOTS", str(root))
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"),
                           default_timeout=120)
    at.run()
    at.text_input(key="folder").set_value(str(root / "album")).run()
    at.button(key="index-folder").click().run()
    assert not at.exception, at.exception
    assert any("outside the folders this server may read" in e.value and "link" in e.value
               for e in at.error)
    assert not (home / "catalog.db").exists() or n_images(home) == 0


def test_a_rerun_after_a_killed_fit_suggests_a_real_flag(home):
    """A fit killed right after saving its model: the rerun is refused with a hint whose flags
    `graceful train` really has, and following the hint gets past the refusal."""
    import re

    from search.cli.training import train_cmd

    empty_gallery(home)
    (home / "models").mkdir()
    (home / "models" / "lite1-fit.safetensors").write_bytes(b"saved by the killed run")
    r = run(home, "train", "--from-gallery", "--backbone", "lite1", "--out", "lite1-fit")
    assert r.exit_code == 1 and "already exists" in r.output, r.output
    options = {o for p in train_cmd.params for o in p.opts}
    suggested = set(re.findall(r"--[a-z][a-z-]+", r.output))
    assert suggested and suggested <= options, (suggested, r.output)
    r = run(home, "train", "--from-gallery", "--backbone", "lite1", "--out", "lite1-fit", "--replace")
    assert r.exit_code == 1 and "no photos yet" in r.output, r.output  # past the name check


def empty_gallery(home: Path) -> None:
    from search.api import Gallery

    Gallery.open(home).close()


EVIL = "![x](http://example.invalid/a.png) :red[y] $z$"


def test_album_names_do_not_render_as_markdown_in_the_app(home, few_photos, monkeypatch):
    from streamlit.testing.v1 import AppTest

    assert run(home, "index", few_photos / "sunflower", "--album", EVIL).exit_code == 0
    monkeypatch.setenv("GRACEFUL_HOME", str(home))
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"),
                           default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    shown = [m.value for m in at.markdown] + [c.value for c in at.caption]
    with_album = [v for v in shown if "📁" in v]
    assert len(with_album) == 4
    assert all("!\\[x\\](http\\://example.invalid/a.png) \\:red\\[y\\] \\$z\\$" in v for v in with_album)
    assert not any("![x](" in v or ":red[" in v for v in shown)
    at.text_input(key="album-rename-new").set_value("[new](http://example.invalid)").run()
    at.button(key="album-rename").click().run()
    assert not at.exception, at.exception
    shown = [m.value for m in at.markdown] + [s.value for s in at.success] + [c.value for c in at.caption]
    assert any("\\[new\\](http\\://example.invalid)" in v for v in shown)
    assert not any("[new](" in v or "![x](" in v for v in shown)


def test_temp_files_of_a_killed_save_are_removed_on_the_next_save(gallery12, few_photos):
    """A save killed mid-write (kill -9 during an sq8/pq reindex of a large gallery) leaves
    `.NAME.PID.XXXX.tmp` files in index/; the next open or save removes those of writers that
    are gone, never a live writer's."""
    index = gallery12 / "index"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = index / f".lite0.faiss.{dead}.k1ll3d.tmp"
        stale.write_bytes(b"\0" * 4096)
        old = index / ".lite0.faiss.abcd1234.tmp"  # written before temp names held a pid
        old.write_bytes(b"\0" * 4096)
        os.utime(old, (1, 1))
        busy = index / f".lite0.faiss.{live.pid}.wr1t1n.tmp"
        busy.write_bytes(b"\0" * 4096)
        r = graceful(gallery12, "reindex", "--kind", "sq8", timeout=120)
        assert r.returncode == 0, r.stderr
        assert not stale.exists() and not old.exists() and busy.exists()
        stale.write_bytes(b"\0")
        r = graceful(gallery12, "search", next(few_photos.rglob("*.jpg")), timeout=120)
        assert r.returncode == 0 and not stale.exists() and busy.exists(), r.stderr
    finally:
        live.kill()
        live.wait()
