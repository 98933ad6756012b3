"""Shared fixtures: real Caltech-101 photos (from ../shared), real models, temp gallery homes."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CALTECH = Path(os.environ.get("GRACEFUL_CALTECH", ROOT.parent / "shared" / "data" / "caltech101"))
ARTIFACTS = ROOT / "tests" / "artifacts"

# The modules whose tests are marked `fast`: `-m fast` collects only these, so the fast tier never
# imports torch, streamlit or the models for tests it would deselect anyway.
FAST_MODULES = {"test_fast.py", "test_plan.py"}


def pytest_ignore_collect(collection_path, config):
    if (config.getoption("markexpr", "") or "").strip() == "fast" and \
            collection_path.name.startswith("test_") and collection_path.suffix == ".py":
        return collection_path.name not in FAST_MODULES
    return None


os.environ.setdefault("GRACEFUL_THREADS", "2")
# ONNX exports of the backbones go to a cache of the test run's own, not the user's ~/.cache
os.environ.setdefault("GRACEFUL_CACHE", str(ARTIFACTS / "cache"))


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
    """10 classes x 30 test photos: the retrieval set."""
    return caltech_subset(tmp_path_factory.mktemp("caltech_small"), "test", 10, 30)


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


@pytest.fixture(scope="session")
def gallery12_template(tmp_path_factory, few_photos) -> Path:
    """The 12 `few_photos` indexed once per session (lite0, FAISS, albums from the folders),
    closed; tests get their own copy (`copy_gallery`), never this one."""
    from search.api import Gallery

    home = tmp_path_factory.mktemp("gallery12") / "gallery"
    with Gallery.open(home, create=True, store="faiss") as g:
        assert g.add([few_photos]).added == 12
    return home


def copy_gallery(template: Path, dest: Path) -> Path:
    """A test's own copy of a closed template gallery (catalog, photos, index files)."""
    shutil.copytree(template, dest)
    return dest


@pytest.fixture(params=["faiss", pytest.param("milvus", marks=pytest.mark.slow)])
def store(request, monkeypatch) -> str:
    """Run a behavioural test once per vector store: new galleries (in this process and in the
    CLI processes it starts) take the store from GRACEFUL_STORE. Milvus is a Milvus Lite file
    inside the gallery."""
    if request.param == "milvus":
        pytest.importorskip("milvus_lite", reason="graceful[milvus] is not installed")
    monkeypatch.setenv("GRACEFUL_STORE", request.param)
    return request.param


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
    import signal
    import sqlite3
    import subprocess
    import time

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if ready():
                proc.send_signal(signal.SIGKILL)
                break
        except sqlite3.OperationalError:
            pass
        time.sleep(0.05)
    proc.wait()
    return proc.returncode


@pytest.fixture
def run_and_kill():
    return _run_and_kill


@pytest.fixture
def bomb_png():
    return _bomb_png


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """A real Milvus standalone server (PyPI `milvus` 2.3.x, `pip install 'graceful[milvus-
    server]'`) for the slow tier: in a network namespace of its own, reachable only through
    127.0.0.1:PORT (tests/milvus_sandbox.py); yields its URI. The whole process group is stopped
    after, and the test fails if any of its processes is left. Start time and memory go to
    tests/artifacts/milvus_server.json."""
    import json
    import subprocess

    from milvus_sandbox import running

    pytest.importorskip("milvus", reason="the Milvus server package is not installed "
                        "(pip install 'graceful[milvus-server]')")
    pytest.importorskip("pymilvus", reason="graceful[milvus] is not installed")
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a network namespace (unshare -n) to keep Milvus off the network")
    try:
        with running(tmp_path_factory.mktemp("milvus_server")) as facts:
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
