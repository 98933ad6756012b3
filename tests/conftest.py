"""Shared fixtures: real Caltech-101 photos (from ../shared), real models, temp gallery homes,
galleries built once per session and copied for each test.

Tiers (markers; pyproject's addopts deselects `slow`):
    python3 -m pytest                        the default tier: fast + real models on FAISS
    python3 -m pytest -m fast                no torch, synthetic data, seconds
    python3 -m pytest -m slow                Ray, Milvus (Lite and server), the browser, kill -9
                                             and Ctrl-C loops, real processes racing, a real full
                                             disk, the second store of store-parametrised tests
    python3 -m pytest -m "slow or not slow"  everything (what .ci/run and README run)
A module holding fast tests must be listed in FAST_MODULES (checked by tests/test_fast.py), so
that `-m fast` collects only those modules and never imports torch."""
from __future__ import annotations

import contextlib
import itertools
import os
import shutil
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
CALTECH = Path(os.environ.get("GRACEFUL_CALTECH", ROOT.parent / "shared" / "data" / "caltech101"))
ARTIFACTS = ROOT / "tests" / "artifacts"

# Modules with tests marked `fast`: with exactly `-m fast` only these are collected (importing the
# others would load torch, streamlit and the models' modules for tests that are deselected).
FAST_MODULES = {"test_fast.py", "test_plan.py", "test_evaluation.py", "test_images.py",
                "test_bridge_math.py", "test_hostile_inputs.py", "test_tooling.py",
                "test_serving_reads.py", "test_engine_fast.py", "test_upgrades_fast.py",
                "test_catalogs.py"}

# Two threads for torch, faiss and ONNX Runtime in this process and the ones it starts; one in
# each pytest-xdist worker, so that two workers do not oversubscribe two cores (OpenMP threads
# spinning for a core another worker holds made some tests 10-30x slower). The same count goes
# to OMP_NUM_THREADS/MKL_NUM_THREADS for the tests that call torch or faiss in-process without
# opening a gallery (which is what sets the count): both size their pools from these when first
# imported. A worker inherits the controller's environment, so the controller's own default
# (marked) is replaced there, while a GRACEFUL_THREADS the user set is kept everywhere.
if os.environ.get("_GRACEFUL_THREADS_FROM") == "conftest" or "GRACEFUL_THREADS" not in os.environ:
    _threads = "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2"
    for _var in ("GRACEFUL_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _threads
    os.environ["_GRACEFUL_THREADS_FROM"] = "conftest"
else:
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, os.environ["GRACEFUL_THREADS"])
# ONNX exports of the backbones go to a cache of the test run's own, not the user's ~/.cache
os.environ.setdefault("GRACEFUL_CACHE", str(ARTIFACTS / "cache"))
# Backbone features go to one folder for the whole run (GRACEFUL_FEATURES, as several galleries
# of one deployment share it): the many galleries made of the same photos embed each with lite2
# once, not once per test. Made empty by the controller, which the workers inherit it from, and
# removed by it at the end. Tests that watch a gallery's own cache fill (kill -9 during
# extraction) take the variable out (cold_features).
if "GRACEFUL_FEATURES" not in os.environ and not os.environ.get("PYTEST_XDIST_WORKER"):
    import tempfile

    os.environ["GRACEFUL_FEATURES"] = tempfile.mkdtemp(prefix="graceful-test-features-")
    os.environ["_GRACEFUL_FEATURES_OWNER"] = str(os.getpid())


def pytest_unconfigure(config):
    import cli_fork

    cli_fork.stop()  # this process's CLI fork server, if a test started it
    if os.environ.get("_GRACEFUL_FEATURES_OWNER") == str(os.getpid()):
        shutil.rmtree(os.environ["GRACEFUL_FEATURES"], ignore_errors=True)


@pytest.fixture
def cold_features(monkeypatch):
    """Backbone features in each gallery's own HOME/cache (the default), not the run's folder."""
    monkeypatch.delenv("GRACEFUL_FEATURES", raising=False)


# Tests that share one machine-wide thing run in one pytest-xdist worker, one after another
# (`-n 2 --dist loadgroup`, README's command): the Ray tests count every Ray process on the
# machine, and the Milvus server is started once per worker that needs it.
SERIAL_GROUPS = {"ray": ("ray_cluster", "ray_runtime", "no_new_ray_processes"),
                 "milvus-server": ("milvus_server",),
                 # the compat criterion's lite0/lite2 features (module-scoped, per worker) are
                 # `graceful train`'s: ~46 core-s more when the two tests land on two workers
                 "compat-features": ("small_split",)}


def serial_group(item) -> str | None:
    for group, fixtures in SERIAL_GROUPS.items():
        if any(f in item.fixturenames for f in fixtures):
            return group
    return "ray" if item.name.startswith("test_ray_") else None


# The modules with the longest tests (docs/BENCHMARKS.md section 19), collected first: xdist
# hands tests out in collection order (after the serial groups), so the run no longer ends
# with one worker on a minute-long test while the other waits.
LONGEST_FIRST = ("test_browser.py", "test_compat_training.py", "test_soak.py", "test_app.py",
                 "test_hostile_inputs.py", "test_bridge.py", "test_upgrade.py", "test_transform.py",
                 "test_fastpath.py", "test_fit.py", "test_tooling.py")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Serial groups for pytest-xdist, the longest modules first; `-m fast` leaves out the slow
    variants of fast scenarios (their Milvus and PostgreSQL parameters are marked slow)."""
    for item in items:
        group = serial_group(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: module order kept
    if (config.getoption("markexpr", "") or "").strip() != "fast":
        return
    keep = [i for i in items if i.get_closest_marker("slow") is None]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


def pytest_ignore_collect(collection_path, config):
    if (config.getoption("markexpr", "") or "").strip() == "fast" and \
            collection_path.name.startswith("test_") and collection_path.suffix == ".py":
        return collection_path.name not in FAST_MODULES
    return None


def caltech_subset(dest: Path, split: str, classes: list[str] | int, per_class: int) -> Path:
    """Copy `per_class` photos of each class (sorted, deterministic) into an ImageFolder."""
    root = CALTECH / split
    if not root.is_dir():
        pytest.fail(f"Caltech-101 not found at {CALTECH} (set GRACEFUL_CALTECH)")
    if isinstance(classes, int):
        all_classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        step = max(1, len(all_classes) // classes)
        classes = all_classes[::step][:classes]
    for c in classes:
        (dest / c).mkdir(parents=True, exist_ok=True)
        for f in sorted((root / c).iterdir())[:per_class]:
            shutil.copy(f, dest / c / f.name)
    return dest


@pytest.fixture(scope="session")
def caltech_small(tmp_path_factory) -> Path:
    """10 classes x 15 test photos: the retrieval set."""
    return caltech_subset(tmp_path_factory.mktemp("caltech_small"), "test", 10, 15)


@pytest.fixture(scope="session")
def few_photos(tmp_path_factory) -> Path:
    """3 classes x 4 photos, for quick ingest tests."""
    return caltech_subset(tmp_path_factory.mktemp("few"), "test",
                          ["airplanes", "Motorbikes", "sunflower"], 4)


ALBUM_CLASSES = ["airplanes", "Motorbikes", "sunflower", "watch"]


@pytest.fixture(scope="session")
def album_photos(tmp_path_factory) -> Path:
    """4 classes x 14 train photos, one folder (= album) each: a gallery to fit upgrades to."""
    return caltech_subset(tmp_path_factory.mktemp("albums"), "train", ALBUM_CLASSES, 14)


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "gallery"


# -- PostgreSQL ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def pg_server():
    """One real PostgreSQL server per test session (tests/pg_server.py: a Unix socket in its own
    temporary folder, no TCP port; run as `nobody` when the tests run as root), stopped after
    with no process left (else the session fails). Skips where PostgreSQL or psycopg is not
    installed (.ci/run installs both)."""
    from pg_server import pg_bin, running

    pytest.importorskip("psycopg", reason="graceful[postgres] is not installed")
    if not pg_bin("initdb") or not pg_bin("postgres"):
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    try:
        with running() as server:
            yield server
    except RuntimeError as e:
        pytest.fail(str(e))


@pytest.fixture
def pg_url(pg_server) -> str:
    """A new empty database on the session's server, for one test."""
    return pg_server.new_database()


CATALOGS = ["sqlite", pytest.param("postgres", marks=pytest.mark.slow)]


@pytest.fixture(params=CATALOGS)
def catalog(request, monkeypatch) -> str:
    """Run a test once per catalog: galleries opened in this process and in the CLI processes it
    starts take it from GRACEFUL_CATALOG (SQLite: HOME/catalog.db; PostgreSQL: a database of
    the session's server, new for this test). Returns "sqlite" or the URL."""
    if request.param == "sqlite":
        monkeypatch.delenv("GRACEFUL_CATALOG", raising=False)
        return "sqlite"
    url = request.getfixturevalue("pg_server").new_database()
    monkeypatch.setenv("GRACEFUL_CATALOG", url)
    return url


def on_postgres() -> bool:
    return os.environ.get("GRACEFUL_CATALOG", "").startswith("postgresql://")


def catalog_rows(home: Path, sql: str, params=()) -> list[tuple]:
    """Rows of a read of the gallery's catalog from outside the engine, on either backend
    (`?` placeholders); a catalog not there yet is sqlite3.OperationalError on both (the
    `run_and_kill` readiness checks wait through it)."""
    import sqlite3

    if on_postgres():
        import psycopg

        try:
            with psycopg.connect(os.environ["GRACEFUL_CATALOG"], autocommit=True) as conn:
                return conn.execute(sql.replace("?", "%s"), list(params)).fetchall()
        except psycopg.Error as e:
            raise sqlite3.OperationalError(str(e)) from None
    with sqlite3.connect(f"file:{home / 'catalog.db'}?mode=ro", uri=True, timeout=1) as db:
        return db.execute(sql, list(params)).fetchall()


def catalog_integrity(home: Path) -> str:
    """SQLite's integrity check, or on PostgreSQL the catalog's own (tables, orphans)."""
    import sqlite3

    if on_postgres():
        from search.settings import Settings
        from search.storage.catalog import open_catalog

        cat = open_catalog(home, os.environ["GRACEFUL_CATALOG"], Settings.from_env(), False)
        try:
            return "; ".join(cat.integrity_check())
        finally:
            cat.close()
    with sqlite3.connect(home / "catalog.db") as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


STORES = ["faiss", pytest.param("milvus", marks=pytest.mark.slow),
          pytest.param("faiss-postgres", marks=pytest.mark.slow)]


@pytest.fixture(params=STORES)
def store(request, monkeypatch) -> str:
    """Run a behavioural test once per vector store: new galleries (in this process and in the
    CLI processes it starts) take the store from GRACEFUL_STORE. Milvus is a Milvus Lite file
    inside the gallery; that variant belongs to the slow tier, and so does `faiss-postgres`,
    the FAISS variant on a PostgreSQL catalog (GRACEFUL_CATALOG: a new database of the
    session's server). Returns the store's kind."""
    if request.param == "milvus":
        pytest.importorskip("milvus_lite", reason="graceful[milvus] is not installed")
    kind = request.param.split("-")[0]
    if request.param.endswith("-postgres"):  # the same test on a PostgreSQL catalog
        monkeypatch.setenv("GRACEFUL_CATALOG", request.getfixturevalue("pg_server").new_database())
    else:
        monkeypatch.delenv("GRACEFUL_CATALOG", raising=False)
    monkeypatch.setenv("GRACEFUL_STORE", kind)
    return kind


# -- galleries built once per session --------------------------------------------------------

def copy_gallery(src: Path, dest: Path) -> Path:
    """A private copy of a closed gallery: catalog, photo store, index files, models, reports and
    the Milvus Lite folder (milvus.db) when it has one. The fit feature cache stays behind (tests
    that need it warm or cold decide themselves) and so does the lock file of the Milvus Lite
    file's holder."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("cache", "milvus.db.lock",
                                                             PG_SNAPSHOT))
    if (src / PG_SNAPSHOT).is_file():  # its catalog is a database: cloned, and used from now on
        os.environ["GRACEFUL_CATALOG"] = clone_database((src / PG_SNAPSHOT).read_text())
    return dest


PG_SNAPSHOT = "postgres-snapshot.url"  # in a snapshot home whose catalog is a PostgreSQL database


_CLONES = itertools.count(1)


def clone_database(url: str) -> str:
    """A new database holding a copy of the one at `url` (CREATE DATABASE ... TEMPLATE): this
    process's idle connections to it are closed first."""
    import subprocess
    from urllib.parse import urlsplit

    from pg_server import create_strategy

    from search.storage.catalog.pg import release

    release(url)
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    while True:  # a name taken already (by an earlier session's database): the next one
        clone = f"{name}_c{next(_CLONES)}_{os.getpid()}"
        admin = url.replace(f"/{name}?", "/postgres?")
        r = subprocess.run(["psql", "-X", "-q", "-d", admin, "-c",
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                            f"datname = '{name}' AND pid <> pg_backend_pid()", "-c",
                            f"CREATE DATABASE {clone} TEMPLATE {name}{create_strategy(url)}"],
                           capture_output=True, text=True)
        if r.returncode == 0:
            return url.replace(f"/{name}?", f"/{clone}?")
        if "already exists" not in r.stderr:
            raise RuntimeError(f"cannot clone {name}: {r.stderr.strip()}")


@pytest.fixture(scope="session")
def gallery_snapshot(tmp_path_factory, request) -> Callable[[str, Callable[[Path], None]], Path]:
    """`gallery_snapshot(key, build)`: the home of a gallery that `build(home)` made, built once
    per session per key; `build` must leave it closed (so its files are a consistent snapshot:
    the SQLite catalog checkpointed, the FAISS files saved, Milvus Lite flushed). Tests never
    write to it: they take `copy_gallery(snapshot, their_home)`."""
    built: dict[str, Path] = {}

    def snapshot(key: str, build: Callable[[Path], None]) -> Path:
        pg = on_postgres()
        key += "-postgres" if pg else ""
        if key not in built:
            home = tmp_path_factory.mktemp(f"snapshot-{key}") / "gallery"
            if pg:  # built into a database of its own, which copies clone
                url = request.getfixturevalue("pg_server").new_database("snap")
                test_catalog = os.environ["GRACEFUL_CATALOG"]
                os.environ["GRACEFUL_CATALOG"] = url
                try:
                    build(home)
                finally:
                    os.environ["GRACEFUL_CATALOG"] = test_catalog
                (home / PG_SNAPSHOT).write_text(url)
                built[key] = home
                return home
            build(home)
            assert (home / "catalog.db").is_file(), f"the {key} snapshot was not built"
            built[key] = home
        return built[key]

    return snapshot


def ingested(paths: list[Path], store: str = "faiss") -> Callable[[Path], None]:
    """A snapshot builder: a new lite0 gallery on `store` holding these photos (albums = folders)."""
    def build(home: Path) -> None:
        from search.api import Gallery
        from search.ops.ingest import ingest

        g = Gallery.open(home, create=True, store=store)
        try:
            ingest(g.core, paths)
        finally:
            g.close()
    return build


@pytest.fixture
def album_gallery(gallery_snapshot, album_photos, tmp_path, request) -> Path:
    """A private copy of a lite0 gallery of the 4 albums x 14 photos (album_photos), on the
    test's `store` when it uses that fixture, else FAISS."""
    store = request.getfixturevalue("store") if "store" in request.fixturenames else "faiss"
    src = gallery_snapshot(f"albums-{store}", ingested([album_photos], store))
    return copy_gallery(src, tmp_path / "album-gallery")


@pytest.fixture(scope="session")
def lite0():
    from models import registry

    return registry.load("lite0")


def _make_checkpoint(path: Path, backbone="lite0", in_dim=1280, dim=64, space="lite0",
                     name="tiny-compat"):
    """A small random linear head saved as a Graceful checkpoint (claims `space`)."""
    import torch

    from models.checkpoint import CheckpointMeta, save_checkpoint
    from models.heads import build_head

    head_spec = {"type": "linear", "in_dim": in_dim, "out_dim": dim}
    meta = CheckpointMeta(name=name, backbone=backbone, dim=dim, space=space,
                          compatible_with=[space], method="bct", head=head_spec, old_model="lite0")
    torch.manual_seed(0)
    save_checkpoint(path, meta, build_head(head_spec))
    return meta


@pytest.fixture
def make_checkpoint():
    return _make_checkpoint


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG that claims width x height pixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _run_and_kill(cmd: list[str], env: dict, ready, timeout: float = 180) -> int:
    """Run `cmd`, SIGKILL it as soon as `ready()` says so (a catalog busy for a moment counts
    as not yet), and return its exit status (-SIGKILL when it was killed)."""
    import sqlite3
    import subprocess
    import sys
    import time

    if cmd[:3] == [sys.executable, "-m", "search.cli"]:
        import cli_fork

        proc = cli_fork.start(cmd[3:], env)
    else:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while proc.poll() is None:
        if time.time() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"not ready to be killed within {timeout} s: {cmd}")
        try:
            if ready():
                proc.kill()
                break
        except sqlite3.OperationalError:
            pass
        time.sleep(0.05)
    proc.wait()
    return proc.returncode


@pytest.fixture
def run_and_kill():
    return _run_and_kill


# Run as `python -c PAUSE_HOOK MODULE ARGS...`: runs MODULE as __main__ with every SQLite
# connection traced, and stops the process for good, writing the file $GRACEFUL_TEST_PAUSED
# first ("in a transaction" or "outside a transaction"), just before it runs the statement
# named by $GRACEFUL_TEST_PAUSE:
#   write:KEY   the first write (INSERT/UPDATE) of the catalog's state row KEY
#   commit:KEY  the COMMIT of the transaction that wrote state row KEY
# So a test can SIGKILL a real CLI process at a known point inside a transaction, without a
# hook in the product (the statements are the catalog's own; only `sqlite3.connect` is wrapped).
PAUSE_HOOK = r"""
import os, runpy, sqlite3, sys, time

where, key = os.environ["GRACEFUL_TEST_PAUSE"].split(":", 1)
marker = os.environ["GRACEFUL_TEST_PAUSED"]
literal = "'" + key.upper() + "'"
connect = sqlite3.connect


def pause(conn):
    with open(marker + ".tmp", "w") as f:
        f.write("in a transaction" if conn.in_transaction else "outside a transaction")
    os.replace(marker + ".tmp", marker)  # whole when it appears
    while True:
        time.sleep(3600)


def traced(*args, **kwargs):
    conn = connect(*args, **kwargs)
    wrote = []

    def trace(sql):
        s = sql.lstrip().upper()
        if s.startswith(("INSERT", "UPDATE", "REPLACE")) and literal in s:
            if where == "write":
                pause(conn)
            wrote.append(s)
        elif s.startswith("COMMIT") and wrote and where == "commit":
            pause(conn)
        elif s.startswith(("COMMIT", "ROLLBACK")):
            wrote.clear()

    conn.set_trace_callback(trace)
    return conn


sqlite3.connect = traced
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def _kill_at(module_args: list[str], env: dict, point: str, marker: Path,
             timeout: float = 300) -> int:
    """Run `python -m MODULE ARGS` (module_args) until it reaches `point` (see PAUSE_HOOK), then
    SIGKILL it; returns its exit status. The marker file says that it really stopped there."""
    import sys

    if on_postgres():
        pytest.skip("the pause hook stops SQLite statements; on PostgreSQL the writer's kill -9 "
                    "is tests/test_catalogs.py's")
    marker.unlink(missing_ok=True)
    env = {**env, "GRACEFUL_TEST_PAUSE": point, "GRACEFUL_TEST_PAUSED": str(marker)}
    return _run_and_kill([sys.executable, "-c", PAUSE_HOOK, *module_args], env, marker.exists,
                         timeout)


@pytest.fixture
def kill_at():
    return _kill_at


@pytest.fixture
def bomb_png():
    return _bomb_png


RAY_CLUSTER_SESSIONS: set[int] = set()  # process sessions of the test cluster (ray_cluster)


class GroupServer:
    """A server the tests of one serial group share (SERIAL_GROUPS): started by the first of
    them that asks, stopped when the worker's next test is outside the group
    (pytest_runtest_teardown), or at the session's end. A session-long server would idle through
    the rest of the run: ~0.03 cores for the Milvus server, ~0.02 for a Ray runtime."""

    def __init__(self, open_: Callable[[], contextlib.AbstractContextManager]):
        self._open = open_
        self._cm: contextlib.AbstractContextManager | None = None
        self.value = None

    def get(self):
        if self._cm is None:
            cm = self._open()
            self.value = cm.__enter__()
            self._cm = cm
        return self.value

    def close(self) -> None:
        cm, self._cm = self._cm, None
        if cm is not None:
            cm.__exit__(None, None, None)


GROUP_SERVERS: dict[str, GroupServer] = {}


def group_server(group: str, open_: Callable[[], contextlib.AbstractContextManager]):
    return GROUP_SERVERS.setdefault(group, GroupServer(open_)).get()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    group = serial_group(item)
    server = GROUP_SERVERS.get(group or "")
    if server is not None and (nextitem is None or serial_group(nextitem) != group):
        server.close()  # raises when it leaves a process or its folder: this test's teardown fails


@pytest.fixture(scope="session", autouse=True)
def _group_servers_stop():
    yield
    with contextlib.ExitStack() as stack:  # an interrupted run: every one, though one raises
        for server in GROUP_SERVERS.values():
            stack.callback(server.close)


@contextlib.contextmanager
def _local_ray_runtime():
    from models.ray_runtime import LocalRuntime

    runtime = LocalRuntime(cpus=2)
    session = None
    try:
        runtime.start(timeout=180)
        assert runtime.proc is not None
        session = runtime.proc.pid
        RAY_CLUSTER_SESSIONS.add(session)  # its workers come and go during other tests
        temp = Path(runtime.temp_dir or "")
        yield runtime
    finally:
        runtime.stop()
        RAY_CLUSTER_SESSIONS.discard(session)  # type: ignore[arg-type]
    assert runtime.pids() == [], "the test Ray runtime left processes behind"
    assert not temp.exists(), "the test Ray runtime left its folder behind"


@pytest.fixture
def ray_runtime():
    """A real Ray cluster on this machine for the "ray" group's tests: `ray start --head` on
    127.0.0.1 in a process session of its own (the product's LocalRuntime), stopped after the
    group (GroupServer) with every process of it, and only those (no `ray stop`, which would
    stop any Ray on the machine); that teardown fails if any of its processes or its temporary
    folder is left."""
    pytest.importorskip("ray", reason="graceful[ray] is not installed")
    return group_server("ray", _local_ray_runtime)


@pytest.fixture
def ray_cluster(ray_runtime) -> str:
    """The address of the group's Ray cluster (ray_runtime)."""
    return ray_runtime.address


@contextlib.contextmanager
def _milvus_server(base: Path):
    import json

    from milvus_sandbox import running

    try:
        with running(base) as facts:
            yield facts["uri"]
            try:
                facts["rss_kib_at_end"] = int(open(f"/proc/{facts['milvus_pid']}/status").read()
                                              .split("VmRSS:")[1].split()[0])
            except (OSError, IndexError, KeyError):
                pass
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / "milvus_server.json").write_text(json.dumps(facts))
    except RuntimeError as e:  # did not start, or left processes behind
        pytest.fail(str(e))


@pytest.fixture
def milvus_server(tmp_path_factory):
    """A real Milvus standalone server (PyPI `milvus` 2.3.x, `pip install 'graceful[milvus-
    server]'`) for the "milvus-server" group: in a network namespace of its own, reachable only
    through 127.0.0.1:PORT (tests/milvus_sandbox.py); yields its URI. The whole process group is
    stopped after the group (GroupServer), and that teardown fails if any of its processes is
    left. Start time and memory go to tests/artifacts/milvus_server.json."""
    import subprocess

    pytest.importorskip("milvus", reason="the Milvus server package is not installed "
                        "(pip install 'graceful[milvus-server]')")
    pytest.importorskip("pymilvus", reason="graceful[milvus] is not installed")
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a network namespace (unshare -n) to keep Milvus off the network")
    return group_server("milvus-server",
                        lambda: _milvus_server(tmp_path_factory.mktemp("milvus_server")))


@pytest.fixture
def no_fsync(monkeypatch):
    """Durability is not what the fast engine tests measure: skip fsync (about a third of their
    time on a busy disk). The kill -9 tests of the default and slow tiers keep it."""
    import models.fsutil

    monkeypatch.setattr(models.fsutil.os, "fsync", lambda fd: None)


@pytest.fixture(scope="session")
def fake_photos(tmp_path_factory) -> Path:
    """4 albums (colours) x 12 synthetic photos, one folder each."""
    from fakes import ALBUMS, PER_ALBUM, make_photos

    return make_photos(tmp_path_factory.mktemp("fake-photos"), ALBUMS, PER_ALBUM)


@pytest.fixture(scope="session")
def fake_queries(tmp_path_factory) -> Path:
    """Other photos of the same 4 colours (3 each): a labelled query folder."""
    from fakes import ALBUMS, make_photos

    return make_photos(tmp_path_factory.mktemp("fake-queries"), ALBUMS, 3, seed=7)


@pytest.fixture
def fake_gallery(gallery_snapshot, fake_photos, tmp_path, request):
    """A private copy of a fake-a gallery of fake_photos (48 photos, 4 albums), open with a new
    FakeModels provider; closed after the test. On the test's `store` when it uses that fixture
    (the scenarios whose outcome a vector store or catalog could change run on each), else
    FAISS on SQLite."""
    import sqlite3

    from fakes import open_fake

    store = request.getfixturevalue("store") if "store" in request.fixturenames else "faiss"

    def build(home: Path) -> None:
        g = open_fake(home, store=store)
        try:
            g.add(fake_photos)
        finally:
            g.close()
        if (home / "catalog.db").is_file():  # copies take the catalog, not its WAL
            with sqlite3.connect(home / "catalog.db") as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    home = copy_gallery(gallery_snapshot(f"fake-a-{store}", build), tmp_path / "gallery")
    g = open_fake(home)
    assert g.core.vector_store.kind == store
    yield g
    g.close()
