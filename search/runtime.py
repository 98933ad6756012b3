"""Thread settings: torch and faiss each bring an OpenMP runtime, so both are set explicitly."""
from __future__ import annotations

import os

_configured = False


def configure_threads(n: int | None = None) -> int:
    global _configured
    n = n or int(os.environ.get("GRACEFUL_THREADS", 0)) or max(1, min(os.cpu_count() or 1, 8))
    if _configured == n:
        return n
    import faiss
    import torch

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    _configured = n
    return n
