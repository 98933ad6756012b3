"""The ONNX Runtime fast path for frozen backbones on the CPU.

A backbone's feature function (preprocessed batch (N,3,H,W) -> un-normalised features) is
exported once to ONNX from the very weights the torch model holds, with a dynamic batch axis,
and cached on disk under a name keyed by the model, a hash of its weights, the input size and
the onnxruntime version. Nothing in the cache is trusted: every session, fresh or cached, must
reproduce torch's features on a fixed probe batch (cosine >= PROBE_COSINE) before it is used;
a damaged or stale file is exported again. Training never comes here: it runs the torch module.

Which runtime an embedder uses: `choose_runtime` (parameter, else `GRACEFUL_RUNTIME`: `auto`
(default), `torch` or `onnxruntime`). Any failure (onnxruntime missing, export or probe failing)
falls back to torch with a warning; `auto` stays silent when onnxruntime is simply not installed.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from .fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnxruntime")
OPSET = 17  # measured fastest on ORT 1.32 (13 and 18 were slower or no faster)
FORMAT = 1  # bump when the export recipe changes: old cache files are then ignored
PROBE_COSINE = 0.9999


def requested_runtime(runtime: str | None = None) -> str:
    from models.settings import Settings

    value = (runtime or Settings.from_env().runtime).strip().lower()
    if value not in RUNTIMES:
        raise ValueError(f"GRACEFUL_RUNTIME must be one of {', '.join(RUNTIMES)}, got {value!r}")
    return value


def cache_dir() -> Path:
    """`$GRACEFUL_CACHE/onnx`, else `~/.cache/graceful/onnx`."""
    from models.settings import Settings

    root = Settings.from_env().cache
    return Path(root) / "onnx" if root else Path.home() / ".cache" / "graceful" / "onnx"


def default_threads() -> int:
    return torch.get_num_threads() or int(os.environ.get("OMP_NUM_THREADS") or 0) or 1


def weights_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


class _Features(torch.nn.Module):
    """The module torch.onnx traces: `fn` over `module`'s parameters."""

    def __init__(self, module: torch.nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.module = module
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def export_onnx(module: torch.nn.Module, fn: Callable[[torch.Tensor], torch.Tensor],
                size: int) -> bytes:
    buf = io.BytesIO()
    dummy = torch.zeros(2, 3, size, size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings from timm's "same" padding
        torch.onnx.export(_Features(module, fn).eval(), (dummy,), buf, input_names=["images"],
                          output_names=["features"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
    return buf.getvalue()


@contextlib.contextmanager
def _export_lock(path: Path) -> Iterator[None]:
    """An exclusive lock beside the cache file while one process exports it (none where the
    cache folder cannot be written: that process exports alone, in memory)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


class OrtFeatures:
    """An onnxruntime session computing `fn(batch)` for one module's weights.

    `module` is kept so that the owner can tell whether its torch module is still the one this
    session was exported from (a swapped module means: back to torch)."""

    def __init__(self, name: str, module: torch.nn.Module,
                 fn: Callable[[torch.Tensor], torch.Tensor], size: int,
                 folder: Path | None = None, threads: int | None = None):
        import onnxruntime as ort

        self.module, self.size = module, size
        self.threads = threads or default_threads()
        folder = Path(folder) if folder is not None else cache_dir()
        self.path: Path | None = folder / (
            f"{name}-{size}-{weights_hash(module)}-f{FORMAT}-op{OPSET}-ort{ort.__version__}.onnx")
        self.exported = False  # True when this construction had to export (not a cache hit)
        self._data: bytes | None = None  # the model itself when there is no cache file to read
        probe = torch.Generator().manual_seed(0)
        probe = torch.rand(2, 3, size, size, generator=probe) * 2 - 1
        with torch.inference_mode():
            expected = fn(probe.contiguous(memory_format=torch.channels_last)).float().numpy()
        if self._open_cached(probe.numpy(), expected):
            return
        # processes sharing the cache (app processes, a job runner, test workers) export once:
        # the others wait for the file and read it
        with _export_lock(self.path):
            if self._open_cached(probe.numpy(), expected):
                return
            data = export_onnx(module, fn, size)
            self.exported = True
            self._open(data, probe.numpy(), expected)
            try:
                atomic_write_bytes(self.path, data)
            except OSError as e:  # read-only cache: run from memory, export again next time
                log.warning("could not cache the ONNX model in %s: %s", folder, e)
                self.path, self._data = None, data

    def _open_cached(self, probe: np.ndarray, expected: np.ndarray) -> bool:
        if self.path is None or not self.path.is_file():
            return False
        try:
            self._open(self.path.read_bytes(), probe, expected)
            return True
        except Exception as e:  # damaged, truncated, stale: export again
            log.warning("ONNX cache file %s unusable (%s); exporting again", self.path, e)
            return False

    def _open(self, data: bytes, probe: np.ndarray, expected: np.ndarray) -> None:
        self._data = None
        self._session = self._make_session(data)
        got = self._session.run(None, {"images": probe})[0]
        if got.shape != expected.shape:
            raise RuntimeError(f"ONNX output {got.shape} != torch {expected.shape}")
        cos = float(_cosines(got, expected).min())
        if not cos >= PROBE_COSINE:
            raise RuntimeError(f"ONNX output differs from torch (cosine {cos:.6f})")

    def _make_session(self, data: bytes):
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

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self._session.run(None, {"images": x})[0])

    # Picklable (process pools, deepcopy): the session is rebuilt from the cached file.
    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k != "_session"}
        if self.path is not None:
            state["_data"] = None
        return state

    def __setstate__(self, state: dict) -> None:
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
            self.module = self._session = None


def choose_runtime(name: str, module: torch.nn.Module,
                   fn: Callable[[torch.Tensor], torch.Tensor], size: int,
                   runtime: str | None = None, folder: Path | None = None
                   ) -> OrtFeatures | None:
    """The ONNX session to use for `fn`, or None for torch (asked for, or any failure)."""
    want = requested_runtime(runtime)
    if want == "torch":
        return None
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        if want == "onnxruntime":
            warnings.warn("GRACEFUL_RUNTIME=onnxruntime but onnxruntime is not installed; "
                          "using torch", RuntimeWarning, stacklevel=3)
        return None
    try:
        return OrtFeatures(name, module, fn, size, folder)
    except Exception as e:  # export or probe failed: torch still gives the same vectors
        warnings.warn(f"{name}: ONNX Runtime path unavailable ({type(e).__name__}: {e}); "
                      "using torch", RuntimeWarning, stacklevel=3)
        return None
