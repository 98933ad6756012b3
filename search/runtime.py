"""Thread settings: torch and faiss each bring an OpenMP runtime, so both are set explicitly."""
from __future__ import annotations

import os

_configured: int | bool = False


def configure_threads(n: int | None = None) -> int:
    global _configured
    from models.settings import Settings

    n = n or Settings.from_env().threads or max(1, min(os.cpu_count() or 1, 8))
    if _configured == n:
        return n
    import sys

    import faiss

    from models.pipeline import bound_malloc

    bound_malloc()  # large blocks back to the system when freed (long ingests stay flat)
    faiss.omp_set_num_threads(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    else:  # torch sizes its pool from these when (and if) a command imports it
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)
    _configured = n
    return n
