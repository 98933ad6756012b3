"""Background jobs for long-running work started from the app (backfill, re-embed, transform,
fits, training on a dataset, benchmarks): part of the API, each job one `Gallery` call.

A job runs in a daemon thread with its *own* Gallery (own SQLite connection), so it never
shares a transaction with the foreground. Stopping is cooperative (checked every batch); since
every job derives its progress from the catalog, pause = stop and resume = start again.
"""
from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from models.imagefolder import DatasetError

from search.errors import HANDLED, GalleryError, friendly

# faults a user can cause and read in one line (the job's message): no traceback in the log
EXPECTED = (GalleryError, DatasetError, *HANDLED)


@dataclass
class Job:
    name: str
    started_at: float = field(default_factory=time.time)
    done: int = 0
    total: int = 0
    rate: float = 0.0
    eta_seconds: float | None = None
    status: str = "running"  # running | stopping | stopped | finished | failed
    message: str = ""
    result: Any = None
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    def stop(self) -> None:
        self._stop.set()
        if self.running:
            self.status = "stopping"

    def should_stop(self) -> bool:
        return self._stop.is_set()


class JobRunner:
    """At most one job per name; shared by all sessions of the app process."""

    def __init__(self):
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()

    def get(self, name: str) -> Job | None:
        return self.jobs.get(name)

    def start(self, name: str, work: Callable[[Job], Any]) -> Job:
        with self.lock:
            current = self.jobs.get(name)
            if current and current.running:
                return current
            job = Job(name)

            def run() -> None:
                try:
                    job.result = work(job)
                    job.status = "stopped" if job.should_stop() else "finished"
                except Exception as e:  # shown to the user as a message, never a traceback
                    job.status = "failed"
                    job.message = friendly(e)
                    if not isinstance(e, EXPECTED):  # a fault of ours: the server log gets it
                        traceback.print_exc()

            job._thread = threading.Thread(target=run, name=f"graceful-job-{name}", daemon=True)
            self.jobs[name] = job
            job._thread.start()
            return job


STAGE_MESSAGES = {"features": "computing the new backbone's features",
                  "training": "training and measuring on the held-out slice"}


def _progress_into(job: Job) -> Callable[[Any], None]:
    """A progress callback (models.progress.Progress) that mirrors its state into `job`."""
    def progress(state) -> None:
        job.done, job.total = state.done, state.total
        job.rate, job.eta_seconds = state.rate, state.eta_seconds
        if state.stage in STAGE_MESSAGES:
            job.message = STAGE_MESSAGES[state.stage]
    return progress


def _in_own_gallery(home: Path, fn: Callable[[Any], Any], models: Any = None) -> Any:
    """`fn(gallery)` on a Gallery of the job's own; `models`: its model provider (default: the
    installed registry; tests pass fakes)."""
    from search.api import Gallery

    gallery = Gallery.open(home, create=False, models=models)
    try:
        return fn(gallery)
    finally:
        gallery.close()


def backfill_job(home: Path, order: str, limit: int | None = None, *,
                 models: Any = None) -> Callable[[Job], Any]:
    def work(job: Job):
        return _in_own_gallery(home, lambda g: g.backfill(
            order, limit, should_stop=job.should_stop, progress=_progress_into(job)).as_dict(),
            models)
    return work


def reembed_job(home: Path, name: str, *, models: Any = None) -> Callable[[Job], Any]:
    def work(job: Job):
        state, switched = _in_own_gallery(home, lambda g: g.reembed(
            name, should_stop=job.should_stop, progress=_progress_into(job)), models)
        job.message = f"switched to {name}" if switched else ""
        return {**state.as_dict(), "switched": switched}
    return work


def transform_job(home: Path, name: str, then_backfill: bool = False, mode: str | None = None,
                  weight: float | None = None, *, models: Any = None) -> Callable[[Job], Any]:
    """`graceful upgrade NAME --transform` (or, for a bridge, `--mode native|fused`) in the
    background (pause = stop, start = resume); with `then_backfill`, the mapped vectors are then
    replaced by real embeddings, most uncertain first."""
    def work(job: Job):
        def run(g):
            result = g.upgrade(name, transform=mode is None, mode=mode, weight=weight,
                               should_stop=job.should_stop, progress=_progress_into(job))
            if not result.changed:
                job.message = "paused: vectors moved so far are kept; start again to continue"
                return result.as_dict()
            job.message = (f"moved {result.vectors_transformed} vectors into {result.space}'s "
                           f"space and switched to it ({result.mode} mode)")
            if then_backfill:
                state = g.backfill("uncertainty", should_stop=job.should_stop,
                                   progress=_progress_into(job))
                job.message += f"; backfilled {state.done} photos" + (
                    " (paused)" if state.interrupted else "")
            return result.as_dict()
        return _in_own_gallery(home, run, models)
    return work


def fit_job(home: Path, backbone: str, out: str, method: str = "auto",
            sample: int | None = None) -> Callable[[Job], Any]:
    """Fit an upgrade to the gallery (`graceful train --from-gallery`) in the background."""
    def work(job: Job):
        from models.features import ExtractionStopped

        t0 = time.time()
        try:
            report = _in_own_gallery(home, lambda g: g.train(
                backbone, out, method, sample=sample, progress=_progress_into(job),
                should_stop=job.should_stop))
        except ExtractionStopped:
            job.message = "paused: features computed so far are kept; start again to resume"
            return None
        job.done = job.total = 1
        job.message = (f"{report.name}: {report.verdict} on {report.sample['held_out']} "
                       f"held-out photos in {time.time() - t0:.0f} s. "
                       + (report.recommendation or "Upgrade to it above."))
        return report.as_dict()
    return work


def train_compatible_job(home: Path, backbone: str, method: str, name: str,
                         data: Path | None = None, loss: str = "ce") -> Callable[[Job], Any]:
    """A compatible model trained against the active one (`g.models.train_compatible`)."""
    def work(job: Job):
        out = _in_own_gallery(home, lambda g: g.models.train_compatible(backbone, method, name,
                                                                        data, loss))
        job.done = job.total = 1
        job.message = f"trained {out.name} (space {out.space}): upgrade to it on the Models page"
        return out.path
    return work


def bench_job(home: Path, kind: str, train: Path, test: Path, loss: str = "ce"
              ) -> Callable[[Job], Any]:
    """`graceful bench chain|hetero` (`g.reports.run_bench`), its report saved."""
    def work(job: Job):
        result = _in_own_gallery(home, lambda g: g.reports.run_bench(kind, train, test, loss))
        job.done = job.total = 1
        job.message = f"saved bench-{kind}-{loss}"
        return result
    return work
