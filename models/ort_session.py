"""ONNX Runtime sessions for frozen backbones, and serving them without importing torch.

`models/onnx_runtime.py` exports a backbone from its torch weights and verifies the session
against torch on a fixed probe batch. Importing torch and building the module costs a process
about 4 s of CPU, most of a CLI search. So once a session has been verified for a backbone
that comes unchanged from its weights file, a *trust record* is written beside the export:
the ONNX file's name and torch's features on the probe, keyed by a hash of the weights file
and of the torch, timm and onnxruntime versions. A later process opens the session from that
record and checks it on the same probe against the stored features (cosine >= PROBE_COSINE)
before using it, without torch. A missing, stale or failing record means: the torch path,
which verifies against torch again and writes a new record.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .fsutil import atomic_write_bytes
from .settings import RUNTIMES

log = logging.getLogger(__name__)

OPSET = 17  # measured fastest on ORT 1.32 (13 and 18 were slower or no faster)
FORMAT = 2  # bump when the export recipe or the probe changes: old cache files are then ignored
PROBE_COSINE = 0.9999


def requested_runtime(runtime: str | None = None) -> str:
    from .settings import Settings

    value = (runtime or Settings.from_env().runtime).strip().lower()
    if value not in RUNTIMES:
        raise ValueError(f"GRACEFUL_RUNTIME must be one of {', '.join(RUNTIMES)}, got {value!r}")
    return value


def cache_dir() -> Path:
    """`$GRACEFUL_CACHE/onnx`, else `~/.cache/graceful/onnx`."""
    from .settings import Settings

    root = Settings.from_env().cache
    return Path(root) / "onnx" if root else Path.home() / ".cache" / "graceful" / "onnx"


def default_threads() -> int:
    """torch's pool size where torch is loaded, else what search.runtime set for it."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.get_num_threads() or 1
    return int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1


def probe_batch(size: int) -> np.ndarray:
    """The fixed batch every session must answer as torch does: (2, 3, size, size) in [-1, 1)."""
    return np.random.default_rng(0).random((2, 3, size, size), dtype=np.float32) * 2 - 1


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


class OrtSession:
    """An onnxruntime session over one ONNX model: `(N,3,H,W)` float32 -> features.

    `path`: the cache file it was read from (None: kept in memory). `exported`: whether this
    process had to export it (False for a cache hit). `ready`: False once a restored copy could
    not rebuild its session (its owner then runs torch)."""

    exported = False

    def __init__(self, threads: int | None = None):
        self.threads = threads or default_threads()
        self.path: Path | None = None
        self._data: bytes | None = None  # the model itself when there is no cache file to read
        self._session: Any = None

    @property
    def ready(self) -> bool:
        return self._session is not None

    def _open(self, data: bytes, probe: np.ndarray, expected: np.ndarray) -> None:
        """Open `data` and check it answers `probe` with `expected` (else RuntimeError)."""
        self._data = None
        self._session = self._make_session(data)
        got = self.run(probe)
        if got.shape != expected.shape:
            raise RuntimeError(f"ONNX output {got.shape} != torch {expected.shape}")
        cos = float(cosines(got, expected).min())
        if not cos >= PROBE_COSINE:
            raise RuntimeError(f"ONNX output differs from torch (cosine {cos:.6f})")

    def _make_session(self, data: bytes) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # NCHWc kernels
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        # workers spin within a run (batch-1 latency) but stop as soon as it returns: spinning
        # between runs starved the ingest loader thread (lite0 ingest 1.2x torch instead of 1.6x)
        so.add_session_config_entry("session.intra_op.allow_spinning", "1")
        so.add_session_config_entry("session.force_spinning_stop", "1")
        return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])

    def run(self, batch: Any) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(batch), dtype=np.float32)
        return self._session.run(None, {"images": x})[0]

    def __call__(self, batch: Any) -> Any:
        """Features of `batch`, of the same kind (a numpy array, or a torch tensor)."""
        if isinstance(batch, np.ndarray):
            return self.run(batch)
        import torch

        return torch.from_numpy(self.run(batch.detach().cpu().numpy()))

    # Picklable (process pools, deepcopy): the session is rebuilt from the cached file.
    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k != "_session"}
        if self.path is not None:
            state["_data"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        import warnings

        self.__dict__.update(state)
        try:
            data = self._data
            if data is None:
                assert self.path is not None  # without a cache file the model is kept in _data
                data = self.path.read_bytes()
            self._session = self._make_session(data)
        except Exception as e:  # cache gone or unreadable here: the owner runs torch
            warnings.warn(f"ONNX session not restored ({e}); using torch", RuntimeWarning,
                          stacklevel=2)
            self._session = None


def _versions() -> str:
    found = []
    for dist in ("torch", "timm", "onnxruntime"):
        try:
            found.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            found.append(f"{dist}=none")
    return ";".join(found)


@functools.lru_cache(maxsize=16)
def _weights_key(name: str, size: int, weights_file: Path, stamp: tuple[int, int]) -> str:
    """The record's key, read once per process and weights file (`stamp`: its mtime and size,
    so a replaced file is read again): the trusted open and the record written after a torch
    fallback need the same 20 MB hashed."""
    h = hashlib.sha256(f"{name}|{size}|f{FORMAT}|op{OPSET}|{_versions()}|".encode())
    with open(weights_file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def record_path(name: str, size: int, weights_file: Path, folder: Path | None = None) -> Path:
    st = Path(weights_file).stat()
    key = _weights_key(name, size, Path(weights_file), (st.st_mtime_ns, st.st_size))
    folder = Path(folder) if folder is not None else cache_dir()
    return folder / f"{name}-{size}-w{key}.trust.json"


def write_record(session: OrtSession, expected: np.ndarray, name: str, size: int,
                 weights_file: Path, folder: Path | None = None) -> None:
    """Record that `session` (verified against torch: `expected` on the probe) serves the
    weights in `weights_file`. Skipped when the session has no cache file or the folder is
    read-only (the next process then verifies with torch again)."""
    if session.path is None:
        return
    try:
        record = {"onnx": session.path.name, "probe_features": expected.tolist()}
        atomic_write_bytes(record_path(name, size, weights_file, folder),
                           json.dumps(record).encode())
    except OSError as e:
        log.warning("could not write the ONNX trust record in %s: %s", folder or cache_dir(), e)


def open_trusted(name: str, size: int, weights_file: Path, folder: Path | None = None,
                 threads: int | None = None) -> OrtSession | None:
    """The verified session for a backbone unchanged from `weights_file`, opened without torch;
    None when there is no usable record (onnxruntime missing, no record, or a file that no
    longer answers the probe as torch did: the torch path exports and verifies it again)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    try:
        path = record_path(name, size, weights_file, folder)
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        expected = np.asarray(record["probe_features"], dtype=np.float32)
        session = OrtSession(threads)
        session.path = path.parent / Path(str(record["onnx"])).name
        session._open(session.path.read_bytes(), probe_batch(size), expected)
        return session
    except Exception as e:  # the torch path re-verifies and says what is wrong
        log.debug("ONNX trust record for %s not usable (%s)", name, e)
        return None
