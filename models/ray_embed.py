"""Decode + embed on Ray workers: one actor per worker holds the model, the caller streams
encoded photos (bytes) in and gets vectors back batch by batch, as they finish.

Only bytes travel, so workers on other machines need neither the caller's files nor its
gallery: a checkpoint the model depends on is shipped with it. The caller stays the only
writer of its catalog. Nothing here is imported unless a job runs with `--ray`.

A gallery's own model provider (GRACEFUL_MODELS, models.registry.Models: your embedders)
travels too, pickled with its state; the workers import its code the way they import this
module (installed on the cluster), or from the folder it was imported from on the caller's
machine (the same path on a worker's). A worker imports torch only if its model does.
"""
from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Iterable, Iterator, TypeVar

import numpy as np

from .ray_runtime import (  # noqa: F401 (the names callers of a Ray job use)
    LOAD_TIMEOUT_ENV,
    START_TIMEOUT_ENV,
    LocalRuntime,
    RayStartTimeout,
    RayUnreachable,
    connect,
    load_timeout,
    prepare_auth,
    session_pids,
)

if TYPE_CHECKING:
    from .registry import Models

K = TypeVar("K")

IN_FLIGHT_PER_WORKER = 2  # batches queued per actor: keeps it busy while one result travels




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
    """What a worker needs to build a model: its name, the checkpoint files behind it, and the
    provider it comes from (None: the installed registry, models.registry.REGISTRY)."""

    name: str
    files: dict[str, bytes]
    provider: Models | None = None

    @classmethod
    def of(cls, name: str, dirs: list[Path] | None = None, provider: Models | None = None
           ) -> "ModelPackage":
        from . import registry

        if provider is registry.REGISTRY:
            provider = None
        models = provider or registry.REGISTRY
        entry = models.resolve(name, dirs)
        files: dict[str, bytes] = {}
        if entry.kind in ("fused", "blend"):  # both generations' models travel
            from .bridge import parse_fused

            old, bridge, _ = parse_fused(name)
            for part in (old, bridge):
                files.update(cls.of(part, dirs, provider).files)
            return cls(entry.name, files, provider)
        # a checkpoint file behind the name travels (a provider's models may have none)
        if entry.kind == "compatible" and entry.meta is not None and Path(entry.source).is_file():
            source = Path(entry.source)
            files[source.name] = source.read_bytes()
            backbone = models.resolve(entry.meta.backbone, dirs)
            if backbone.kind == "compatible" and Path(backbone.source).is_file():
                files[Path(backbone.source).name] = Path(backbone.source).read_bytes()
        return cls(entry.name, files, provider)

    def __reduce__(self) -> tuple[Any, tuple]:
        """A provider travels as cloudpickle bytes with the folder its module was imported from,
        so that a worker can add that folder to its path before it unpickles the provider."""
        if self.provider is None:
            return ModelPackage, (self.name, self.files)
        from ray import cloudpickle

        return _unpack, (self.name, self.files, _import_root(self.provider),
                         cloudpickle.dumps(self.provider))


def _import_root(obj: object) -> str | None:
    """The sys.path folder the module of `obj`'s class was imported from (None: unknown, or a
    module cloudpickle sends by value)."""
    module = sys.modules.get(type(obj).__module__)
    file = getattr(module, "__file__", None)
    if module is None or module.__name__ == "__main__" or not file:
        return None
    root = Path(file).resolve().parent
    for _ in range(module.__name__.count(".") + (Path(file).stem == "__init__")):
        root = root.parent
    return str(root)


def _unpack(name: str, files: dict[str, bytes], root: str | None, provider: bytes
            ) -> ModelPackage:
    import pickle

    if root and root not in sys.path and os.path.isdir(root):
        sys.path.append(root)  # after the worker's own: what it has installed comes first
    return ModelPackage(name, files, pickle.loads(provider))


class _Worker:
    """Ray actor body: the model, loaded once, decoding and embedding whole batches."""

    def __init__(self, package: ModelPackage, threads: int):
        from . import registry

        # Loading reads the files whole, and an actor ends by SIGKILL (no finaliser runs), so the
        # folder goes as soon as the model is loaded rather than with the actor.
        with tempfile.TemporaryDirectory(prefix="graceful-model-") as name:
            folder = Path(name)
            for fname, data in package.files.items():
                (folder / fname).write_bytes(data)
            self.model = (package.provider or registry.REGISTRY).load(package.name, [folder])
        if "torch" in sys.modules:  # a model that computes with torch (a numpy one never imports it)
            import torch

            torch.set_num_threads(threads)

    def runtime(self) -> str:
        return getattr(self.model, "runtime", "torch")

    def imported(self, module: str) -> bool:
        """Whether this worker has imported `module` (tests: a numpy provider's never has torch)."""
        return module in sys.modules

    def embed(self, blobs: list[bytes]) -> tuple[np.ndarray, list, list[tuple[int, str]]]:
        from .imageio import BadImage, decode

        items, infos, failed = [], [], []
        for i, data in enumerate(blobs):
            try:
                decoded = decode(data, target_size=self.model.info.image_size)
                items.append(self.model.preprocess(decoded.image))
                infos.append((i, decoded.width, decoded.height, decoded.format))
            except BadImage as e:
                failed.append((i, str(e)))
        vectors = (self.model.embed_batch(self.model.collate(items)) if items
                   else np.zeros((0, self.model.dim), np.float32))
        return vectors, infos, failed


def _fits(workers: int | None, threads_per_worker: int, cpus: int) -> int:
    """The number of workers (default: as many as the CPUs hold); more than fit is a ValueError."""
    n = max(1, workers or cpus // threads_per_worker)
    if n * threads_per_worker > cpus:
        raise ValueError(f"{n} Ray workers of {threads_per_worker} CPU need "
                         f"{n * threads_per_worker} CPUs; the cluster has {cpus}")
    return n


class RayEmbedPool:
    """Actors holding `package`'s model; `map` streams encoded photos through them."""

    def __init__(self, package: ModelPackage, address: str = "auto", workers: int | None = None,
                 threads_per_worker: int = 1):
        import ray

        self.actors: list = []
        self._runtime: LocalRuntime | None = None
        self._started = False
        if address == "auto":  # a local runtime gets this machine's CPUs: refuse before starting it
            _fits(workers, threads_per_worker, os.cpu_count() or 1)
        self._started, self._runtime = connect(address)
        try:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            self.workers = _fits(workers, threads_per_worker, cpus)
            actor = ray.remote(num_cpus=threads_per_worker)(_Worker).options(
                runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads_per_worker)}})
            self.actors = [actor.remote(package, threads_per_worker) for _ in range(self.workers)]
            # waits for every actor's model: a worker that cannot build it fails here, at once
            self.runtimes = sorted(set(ray.get([a.runtime.remote() for a in self.actors],
                                               timeout=load_timeout())))
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

        try:
            for a in self.actors:
                ray.kill(a)
            self.actors = []
            if self._started:  # a runtime this job started (or joined) ends with it
                ray.shutdown()
                self._started = False
        finally:
            if self._runtime is not None:
                self._runtime.stop()
                self._runtime = None
