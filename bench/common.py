"""Helpers shared by the benchmarks: RSS, timing percentiles, Caltech paths."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CALTECH = Path(os.environ.get("GRACEFUL_CALTECH", ROOT.parent / "shared" / "data" / "caltech101"))


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib() -> float:
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    return _status_mib("VmHWM")


def percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p95_ms": round(float(np.percentile(ms, 95)), 3), "n": len(ms)}


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def machine() -> dict:
    import torch

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def write_json(path: str | None, data: dict) -> None:
    text = json.dumps(data, indent=2)
    print(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)


def caltech_files(split: str, n: int) -> list[Path]:
    files = sorted((CALTECH / split).rglob("*.jpg"))
    rng = np.random.default_rng(0)
    return [files[i] for i in sorted(rng.choice(len(files), size=min(n, len(files)), replace=False))]


def synthetic_vectors(centers: np.ndarray, n: int, rng, noise: float = 0.02) -> np.ndarray:
    """Photo-like vectors: real lite0 embeddings plus noise (random Gaussians in 1280-d have no
    neighbourhood structure, which would make any approximate index look arbitrarily bad)."""
    x = centers[rng.integers(0, len(centers), n)]
    x = x + noise * rng.standard_normal(x.shape, dtype=np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
