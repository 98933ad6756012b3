"""The ONNX Runtime fast path for frozen backbones on the CPU: export and verify against torch.

A backbone's feature function (preprocessed batch (N,3,H,W) -> un-normalised features) is
exported once to ONNX from the very weights the torch model holds, with a dynamic batch axis,
and cached on disk under a name keyed by the model, a hash of its weights, the input size and
the onnxruntime version. Nothing in the cache is trusted: every session, fresh or cached, must
reproduce torch's features on a fixed probe batch (cosine >= PROBE_COSINE) before it is used;
a damaged or stale file is exported again. Training never comes here: it runs the torch module.
Serving an unchanged backbone later without torch: models/ort_session.py.

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
from .ort_session import FORMAT, OPSET, OrtSession, cache_dir, probe_batch, requested_runtime

log = logging.getLogger(__name__)


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


class OrtFeatures(OrtSession):
    """An onnxruntime session computing `fn(batch)` for one module's weights, verified against
    torch on the probe batch (`expected`: torch's features there)."""

    def __init__(self, name: str, module: torch.nn.Module,
                 fn: Callable[[torch.Tensor], torch.Tensor], size: int,
                 folder: Path | None = None, threads: int | None = None):
        import onnxruntime as ort

        super().__init__(threads)
        self.size = size
        folder = Path(folder) if folder is not None else cache_dir()
        self.path = folder / (
            f"{name}-{size}-{weights_hash(module)}-f{FORMAT}-op{OPSET}-ort{ort.__version__}.onnx")
        self.exported = False  # True when this construction had to export (not a cache hit)
        probe = probe_batch(size)
        with torch.inference_mode():
            self.expected = fn(torch.from_numpy(probe).contiguous(
                memory_format=torch.channels_last)).float().numpy()
        if self._open_cached(probe):
            return
        # processes sharing the cache (app processes, a job runner, test workers) export once:
        # the others wait for the file and read it
        with _export_lock(self.path):
            if self._open_cached(probe):
                return
            data = export_onnx(module, fn, size)
            self.exported = True
            self._open(data, probe, self.expected)
            try:
                atomic_write_bytes(self.path, data)
            except OSError as e:  # read-only cache: run from memory, export again next time
                log.warning("could not cache the ONNX model in %s: %s", folder, e)
                self.path, self._data = None, data

    def _open_cached(self, probe: np.ndarray) -> bool:
        if self.path is None or not self.path.is_file():
            return False
        try:
            self._open(self.path.read_bytes(), probe, self.expected)
            return True
        except Exception as e:  # damaged, truncated, stale: export again
            log.warning("ONNX cache file %s unusable (%s); exporting again", self.path, e)
            return False


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
