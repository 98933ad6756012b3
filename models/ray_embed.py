"""Decode + embed on Ray workers: one actor per worker holds the model, the caller streams
encoded photos (bytes) in and gets vectors back batch by batch, as they finish.

Only bytes travel, so workers on other machines need neither the caller's files nor its
gallery: a checkpoint the model depends on is shipped with it. The caller stays the only
writer of its catalog. Nothing here is imported unless a job runs with `--ray`.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Iterable, Iterator, TypeVar

import numpy as np

K = TypeVar("K")

IN_FLIGHT_PER_WORKER = 2  # batches queued per actor: keeps it busy while one result travels
START_TIMEOUT = float(os.environ.get("GRACEFUL_RAY_START_TIMEOUT", "600"))  # s to load models


@dataclass
class DecodedInfo:
    width: int
    height: int
    format: str


@dataclass
class EncodedBatch(Generic[K]):
    """One finished batch: vectors of the photos that decoded, and the ones that did not."""

    keys: list[K]
    vectors: np.ndarray
    infos: list[DecodedInfo]
    failed: list[tuple[K, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ModelPackage:
    """What a worker needs to build a model: its name and the checkpoint files behind it."""

    name: str
    files: dict[str, bytes]

    @classmethod
    def of(cls, name: str, dirs: list[Path] | None = None) -> "ModelPackage":
        from . import registry

        entry = registry.resolve(name, dirs)
        files: dict[str, bytes] = {}
        if entry.kind == "compatible" and entry.meta is not None:
            source = Path(entry.source)
            files[source.name] = source.read_bytes()
            backbone = registry.resolve(entry.meta.backbone, dirs)
            if backbone.kind == "compatible":
                files[Path(backbone.source).name] = Path(backbone.source).read_bytes()
        return cls(entry.name, files)


class _Worker:
    """Ray actor body: the model, loaded once, decoding and embedding whole batches."""

    def __init__(self, package: ModelPackage, threads: int):
        import torch

        from . import registry

        torch.set_num_threads(threads)
        self._files = tempfile.TemporaryDirectory(prefix="graceful-model-")  # gone with the actor
        folder = Path(self._files.name)
        for fname, data in package.files.items():
            (folder / fname).write_bytes(data)
        self.model = registry.load(package.name, [folder])

    def runtime(self) -> str:
        return getattr(self.model, "runtime", "torch")

    def embed(self, blobs: list[bytes]) -> tuple[np.ndarray, list, list[tuple[int, str]]]:
        import torch

        from .imageio import BadImage, decode

        tensors, infos, failed = [], [], []
        for i, data in enumerate(blobs):
            try:
                decoded = decode(data, target_size=self.model.info.image_size)
                tensors.append(self.model.preprocess(decoded.image))
                infos.append((i, decoded.width, decoded.height, decoded.format))
            except BadImage as e:
                failed.append((i, str(e)))
        vectors = (self.model.embed_batch(torch.stack(tensors)) if tensors
                   else np.zeros((0, self.model.dim), np.float32))
        return vectors, infos, failed


def prepare_auth(address: str) -> None:
    """Clusters started by `ray start` (Ray >= 2.59) require the token this machine keeps in
    ~/.ray/auth_token, but a driver connecting by address sends it only in token mode, which
    Ray reads when it is first imported. Token mode also works with clusters that have
    authentication off, so turn it on whenever a token is at hand. (A local runtime that this
    process starts makes its own arrangements: leave it alone.)"""
    if address != "auto" and "RAY_AUTH_MODE" not in os.environ and (
            os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or (Path.home() / ".ray" / "auth_token").is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"


def connect(address: str) -> bool:
    """Join Ray: "auto" starts a local runtime for this job (stopped when it ends); "HOST:PORT"
    or "ray://HOST:PORT" joins that cluster. True if this call initialised Ray."""
    prepare_auth(address)
    import logging

    import ray

    logging.getLogger("ray").setLevel(logging.ERROR)  # quiet library defaults
    if ray.is_initialized():
        return False
    ray.init(address="local" if address == "auto" else address, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    return True


class RayEmbedPool:
    """Actors holding `package`'s model; `map` streams encoded photos through them."""

    def __init__(self, package: ModelPackage, address: str = "auto", workers: int | None = None,
                 threads_per_worker: int = 1):
        import ray

        self.actors: list = []
        self._started = connect(address)
        try:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            self.workers = max(1, workers or cpus // threads_per_worker)
            if self.workers * threads_per_worker > cpus:
                raise ValueError(f"{self.workers} Ray workers of {threads_per_worker} CPU need "
                                 f"{self.workers * threads_per_worker} CPUs; the cluster has {cpus}")
            actor = ray.remote(num_cpus=threads_per_worker)(_Worker).options(
                runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads_per_worker)}})
            self.actors = [actor.remote(package, threads_per_worker) for _ in range(self.workers)]
            # waits for every actor's model: a worker that cannot build it fails here, at once
            self.runtimes = sorted(set(ray.get([a.runtime.remote() for a in self.actors],
                                               timeout=START_TIMEOUT)))
        except BaseException:
            self.close()
            raise

    def map(self, items: Iterable[tuple[K, bytes]], batch_size: int = 16
            ) -> Iterator[EncodedBatch[K]]:
        """Batches finish in any order; every key comes back once, embedded or failed."""
        import ray

        pending: dict = {}  # object ref -> (keys, actor index)
        idle = list(range(len(self.actors))) * IN_FLIGHT_PER_WORKER
        it = iter(items)

        def submit() -> bool:
            keys, blobs = [], []
            for key, data in it:
                keys.append(key)
                blobs.append(data)
                if len(keys) == batch_size:
                    break
            if not keys:
                return False
            a = idle.pop()
            pending[self.actors[a].embed.remote(blobs)] = (keys, a)
            return True

        try:
            while idle and submit():
                pass
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                keys, a = pending.pop(done[0])
                vectors, infos, failed = ray.get(done[0])
                idle.append(a)
                yield EncodedBatch([keys[i] for i, *_ in infos], vectors,
                                   [DecodedInfo(w, h, f) for _, w, h, f in infos],
                                   [(keys[i], why) for i, why in failed])
                while idle and submit():
                    pass
        finally:
            for ref in pending:
                ray.cancel(ref, force=False)

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
        if self._started:  # a runtime this job started (or joined) ends with it
            ray.shutdown()
            self._started = False
