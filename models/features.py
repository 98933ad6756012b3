"""Backbone features, extracted once and cached on disk by (model, image sha256).

The cache of a model is a folder of .npz shards (sha256s + float16 vectors), each written
atomically; an interrupted extraction keeps every finished shard, and a re-run computes only the
images it has not seen.
"""
from __future__ import annotations

import hashlib
import io
import re
import time
import zipfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from .embedder import Embedder, embed_batches
from .fsutil import atomic_write_bytes
from .progress import Progress


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


class FeatureCache:
    def __init__(self, root: Path, model_name: str):
        self.dir = Path(root) / _safe(model_name)
        self._data: dict[str, np.ndarray] | None = None

    def _load(self) -> dict[str, np.ndarray]:
        if self._data is None:
            self._data = {}
            for shard in sorted(self.dir.glob("*.npz")):
                try:
                    with np.load(shard) as z:
                        self._data.update(zip(z["sha"].tolist(), z["vec"]))
                except PermissionError:  # another user's shard in a shared folder: not ours
                    continue
                except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                    try:  # a damaged shard is recomputed
                        shard.unlink(missing_ok=True)
                    except OSError:  # a folder we may only read: its features are missing
                        pass
        return self._data

    def missing(self, shas: Sequence[str]) -> list[int]:
        data = self._load()
        return [i for i, s in enumerate(shas) if s not in data]

    def get(self, shas: Sequence[str]) -> np.ndarray:
        data = self._load()
        return np.stack([data[s] for s in shas]).astype(np.float32)

    def add(self, shas: Sequence[str], vectors: np.ndarray) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, sha=np.array(shas), vec=vectors.astype(np.float16))
        atomic_write_bytes(self.dir / f"{time.time_ns()}-{len(shas)}.npz", buf.getvalue())
        self._load().update(zip(shas, vectors.astype(np.float16)))


def file_shas(files: Sequence[Path]) -> list[str]:
    from .imageio import BadImage, read_photo_file

    shas = []
    for f in files:
        try:
            shas.append(hashlib.sha256(read_photo_file(f)).hexdigest())
        except BadImage as e:
            raise BadImage(f"{f}: {e}") from None
    return shas


class ExtractionStopped(Exception):
    """`should_stop` asked extraction to stop; every finished shard is kept for the next run."""


def extract(model: Embedder, files: Sequence[Path], cache_root: Path, batch_size: int = 32,
            shard_size: int = 256, progress: bool = True, shas: list[str] | None = None,
            on_progress: Callable[[Progress], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> np.ndarray:
    """Normalised features of `files` by `model`, from the cache where possible.

    `on_progress(Progress)` is called after every batch (done counts cached files too);
    `should_stop()` is checked there and raises ExtractionStopped after saving what is done."""
    from .imageio import BadImage, decode, read_photo_file
    from .pipeline import prefetch_map

    cache = FeatureCache(cache_root, model.name)
    shas = shas or file_shas(files)
    todo = cache.missing(shas)
    if todo:
        def load(i: int):
            try:
                img = decode(read_photo_file(files[i]), model.info.image_size).image
            except BadImage as e:
                raise BadImage(f"{files[i]}: {e}") from None
            return i, model.preprocess(img)

        bar = tqdm(total=len(todo), unit="img", desc=f"features {model.name}", disable=not progress)
        cached = len(shas) - len(todo)
        state = Progress("features", model.name, len(shas), cached, stage="features")
        done_s: list[str] = []
        done_v: list[np.ndarray] = []
        for keys, vectors in embed_batches(model, prefetch_map(load, todo), batch_size):
            done_v.append(vectors)
            done_s += [shas[j] for j in keys]
            bar.update(len(keys))
            if len(done_s) >= shard_size:
                cache.add(done_s, np.concatenate(done_v))
                done_s, done_v = [], []
            if on_progress:
                on_progress(state.tick(cached + bar.n))
            if should_stop and should_stop():
                if done_s:
                    cache.add(done_s, np.concatenate(done_v))
                bar.close()
                raise ExtractionStopped(f"stopped after {bar.n} of {len(todo)} images")
        if done_s:
            cache.add(done_s, np.concatenate(done_v))
        bar.close()
    if on_progress:
        on_progress(Progress("features", model.name, len(shas), len(shas), stage="features"))
    return cache.get(shas)
