"""Ray for the gallery's embedding jobs (`--ray`): which cluster, how many workers, and the
model shipped to them. Ray is imported only when a job asks for it."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generator, Iterable, Iterator

from search.errors import GalleryError

if TYPE_CHECKING:
    from models.embedder import Embedder
    from models.ray_embed import EncodedBatch, RayEmbedPool

    from search.core import GalleryCore


@dataclass(frozen=True)
class RayOptions:
    address: str = "auto"  # "auto": a local runtime for this job; else a cluster's address
    workers: int | None = None  # default: one per CPU of the cluster
    threads_per_worker: int = 1

    def validate(self) -> "RayOptions":
        a = self.address
        if a != "auto" and not (a.startswith("ray://") or ":" in a):
            hint = " (it looks like a path: put --ray after the paths, or write --ray auto)" \
                if Path(a).exists() else ""
            raise GalleryError(f"--ray takes auto, HOST:PORT or ray://HOST:PORT, not {a!r}{hint}")
        if self.workers is not None and self.workers < 1:
            raise GalleryError("--ray-workers must be at least 1")
        return self


def embedded(gallery: "GalleryCore", model: "Embedder", items: Iterable, batch_size: int,
             ray: RayOptions | None) -> Generator["EncodedBatch", None, None]:
    """The one place a job's photos are embedded, here or on Ray workers; records which
    runtime computed the vectors. `items`: (key, preprocessed tensor) pairs here, (key, encoded
    bytes) pairs for Ray, whose workers also report the photos they could not decode."""
    from models.embedder import embed_batches
    from models.ray_embed import EncodedBatch

    if ray is None:
        gallery.catalog.state.note_runtime(model.name, [model.runtime])
        for keys, vectors in embed_batches(model, items, batch_size):
            yield EncodedBatch(keys, vectors, [])
        return
    with open_pool(gallery, model, ray) as pool:
        gallery.catalog.state.note_runtime(model.name, pool.runtimes)
        yield from pool.map(items, batch_size)


@contextmanager
def open_pool(gallery: "GalleryCore", model: "Embedder", options: RayOptions
              ) -> Iterator[_Said]:
    from models.ray_embed import (
        START_TIMEOUT_ENV,
        ModelPackage,
        RayEmbedPool,
        RayStartTimeout,
        prepare_auth,
    )

    prepare_auth(options.address)
    try:
        import ray
    except ImportError:
        raise GalleryError("--ray needs Ray: pip install 'graceful[ray]'") from None

    options.validate()
    package = ModelPackage.of(model.name, gallery.model_dirs, gallery.model_provider)
    try:
        pool = RayEmbedPool(package, options.address, options.workers, options.threads_per_worker)
    except RayStartTimeout as e:
        waits = " s, then ".join(f"{w:g}" for w in e.waited)
        if e.address == "auto":
            raise GalleryError(
                f"the local Ray runtime did not start in time (waited {waits} s; "
                f"{START_TIMEOUT_ENV} sets the first wait): the machine may be busy; set "
                f"{START_TIMEOUT_ENV} higher, or run the command without --ray") from None
        raise GalleryError(
            f"the Ray cluster at {e.address} did not answer within {waits} s "
            f"({START_TIMEOUT_ENV}): is it running and reachable (`ray status` on its head)? "
            "Or run the command without --ray") from None
    except ConnectionError as e:
        raise GalleryError(f"cannot reach the Ray cluster at {options.address}: {e}") from None
    except ValueError as e:
        raise GalleryError(str(e)) from None
    except RuntimeError as e:  # `ray start` of the local runtime failed, or joining did
        if options.address != "auto":
            raise GalleryError(f"cannot join the Ray cluster at {options.address}: "
                               f"{_first_line(e)}") from None
        raise GalleryError(f"the local Ray runtime could not start: {_first_line(e)}") from None
    except ray.exceptions.GetTimeoutError:
        raise GalleryError("the Ray workers did not load the model in time (GRACEFUL_RAY_LOAD_"
                           "TIMEOUT, 600 s unless set): is the cluster short of CPUs or memory? "
                           "`ray status` says") from None
    except ray.exceptions.RayError as e:
        raise GalleryError(f"the Ray workers could not load {model.name}: {_first_line(e)}") from None
    try:
        yield _Said(pool)
    finally:
        pool.close()


def _first_line(e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[-1] if lines else repr(e)  # Ray puts the worker's own error last


class _Said:
    """The pool, with a worker's failure during a job as one line (committed batches stay;
    running the command again resumes)."""

    def __init__(self, pool: "RayEmbedPool"):
        self.pool = pool
        self.runtimes = pool.runtimes

    def map(self, items, batch_size: int = 16):
        import ray

        try:
            yield from self.pool.map(items, batch_size)
        except ray.exceptions.RayError as e:
            raise GalleryError(f"a Ray worker failed: {_first_line(e)}; what was committed is "
                               "kept: run the command again to resume") from None
