"""Every `GRACEFUL_*` environment variable, read in one place into one `Settings` object.

The engine reads it once when a gallery opens (`Gallery.open(settings=...)`) and passes it down;
the model library reads it where a model is built. README's "Settings" table lists them all."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping

RUNTIMES = ("auto", "onnxruntime", "torch")
CONSISTENCY = ("Strong", "Session", "Bounded", "Eventually")  # Milvus consistency levels


def _number(env: Mapping[str, str], name: str, default: float, kind=float):
    raw = env.get(name, "")
    try:
        value = kind(raw) if raw.strip() else default
    except ValueError:
        raise ValueError(f"{name} must be a number, not {raw!r}") from None
    if not value > 0:
        raise ValueError(f"{name} must be above 0, not {raw!r}")
    return value


@dataclass(frozen=True)
class Settings:
    home: Path | None = None             # GRACEFUL_HOME: the gallery home
    catalog: str | None = None           # GRACEFUL_CATALOG: postgresql:// URL (default HOME/catalog.db)
    images: Path | None = None           # GRACEFUL_IMAGES: the photo store (default HOME/images)
    features: Path | None = None         # GRACEFUL_FEATURES: backbone features (default HOME/cache)
    threads: int | None = None           # GRACEFUL_THREADS: torch and faiss threads
    store: str | None = None             # GRACEFUL_STORE: faiss | milvus, for a new gallery
    milvus_uri: str | None = None        # GRACEFUL_MILVUS_URI: Milvus Lite file or server URL
    milvus_token: str = ""               # GRACEFUL_MILVUS_TOKEN: a Milvus server's token
    milvus_consistency: str = "Session"  # GRACEFUL_MILVUS_CONSISTENCY: of Milvus searches
    import_roots: str = ""               # GRACEFUL_IMPORT_ROOTS: folders the app may import (':')
    db_timeout: float = 30.0             # GRACEFUL_DB_TIMEOUT: s to wait for the write lock
    db_page_size: int = 65536            # GRACEFUL_DB_PAGE_SIZE: SQLite page size of a new catalog
    transform_batch: int = 2048          # GRACEFUL_TRANSFORM_BATCH: vectors per transform commit
    runtime: str = "auto"                # GRACEFUL_RUNTIME: auto | onnxruntime | torch
    cache: Path | None = None            # GRACEFUL_CACHE: ONNX exports (default ~/.cache/graceful)
    ray_start_timeout: float = 60.0      # GRACEFUL_RAY_START_TIMEOUT: s to start or join Ray
    ray_load_timeout: float = 600.0      # GRACEFUL_RAY_LOAD_TIMEOUT: s for workers to load a model
    models: str | None = None            # GRACEFUL_MODELS: module:object, a provider of models

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """The settings in `env` (default: this process's environment); a bad value is a
        ValueError naming the variable."""
        env = os.environ if env is None else env
        runtime = (env.get("GRACEFUL_RUNTIME") or "auto").strip().lower()
        if runtime not in RUNTIMES:
            raise ValueError(f"GRACEFUL_RUNTIME must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        threads = env.get("GRACEFUL_THREADS", "").strip()
        level = (env.get("GRACEFUL_MILVUS_CONSISTENCY") or "Session").strip()
        consistency = next((c for c in CONSISTENCY if c.lower() == level.lower()), None)
        if consistency is None:
            raise ValueError(f"GRACEFUL_MILVUS_CONSISTENCY must be one of {', '.join(CONSISTENCY)}, "
                             f"got {level!r}")
        return cls(
            home=Path(env["GRACEFUL_HOME"]).expanduser() if env.get("GRACEFUL_HOME") else None,
            catalog=(env.get("GRACEFUL_CATALOG") or "").strip() or None,
            images=Path(env["GRACEFUL_IMAGES"]).expanduser() if env.get("GRACEFUL_IMAGES") else None,
            features=(Path(env["GRACEFUL_FEATURES"]).expanduser() if env.get("GRACEFUL_FEATURES")
                      else None),
            threads=_number(env, "GRACEFUL_THREADS", 0, int) if threads and threads != "0" else None,
            store=env.get("GRACEFUL_STORE") or None,
            milvus_uri=env.get("GRACEFUL_MILVUS_URI") or None,
            milvus_token=env.get("GRACEFUL_MILVUS_TOKEN", ""),
            milvus_consistency=consistency,
            import_roots=env.get("GRACEFUL_IMPORT_ROOTS", ""),
            db_timeout=_number(env, "GRACEFUL_DB_TIMEOUT", cls.db_timeout),
            db_page_size=_number(env, "GRACEFUL_DB_PAGE_SIZE", cls.db_page_size, int),
            transform_batch=_number(env, "GRACEFUL_TRANSFORM_BATCH", cls.transform_batch, int),
            runtime=runtime,
            cache=Path(env["GRACEFUL_CACHE"]).expanduser() if env.get("GRACEFUL_CACHE") else None,
            ray_start_timeout=_number(env, "GRACEFUL_RAY_START_TIMEOUT", cls.ray_start_timeout),
            ray_load_timeout=_number(env, "GRACEFUL_RAY_LOAD_TIMEOUT", cls.ray_load_timeout),
            models=(env.get("GRACEFUL_MODELS") or "").strip() or None,
        )

    @staticmethod
    def variables() -> list[str]:
        return [f"GRACEFUL_{f.name.upper()}" for f in fields(Settings)]
