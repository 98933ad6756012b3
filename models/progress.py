"""The one progress type that every long job reports (ingest, backfill, re-embed, feature
extraction, fitting an upgrade, check): what, how far, how fast, how long to go."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Progress:
    job: str
    model: str = ""
    total: int = 0
    done: int = 0
    failed: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    stage: str = ""
    notes: list[str] = field(default_factory=list)  # one-line messages for whoever draws this
    started: float = field(default_factory=time.perf_counter, repr=False)

    def tick(self, done: int | None = None) -> "Progress":
        """Record how far the job got (and when)."""
        if done is not None:
            self.done = done
        self.seconds = time.perf_counter() - self.started
        return self

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    @property
    def eta_seconds(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate else None

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("started")
        d.pop("notes")
        d["images_per_second"] = round(self.rate, 2)
        d["eta_seconds"] = round(self.eta_seconds, 1) if self.eta_seconds is not None else None
        return d


class ProgressBar:
    """Draws Progress reports as a tqdm bar on stderr: the CLI's (and the API's progress=True)
    view of a job; the engine itself only reports Progress."""

    VERBS = {"ingest": "indexing"}  # what the bar says a job is doing, where the name differs

    def __init__(self, unit: str = "img", enabled: bool = True):
        self.unit, self.enabled = unit, enabled
        self.bar: Any = None  # a tqdm bar, made on the first report

    def __call__(self, p: Progress) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            job = self.VERBS.get(p.job, p.job)
            desc = f"{job} with {p.model}" if p.model and p.model not in job else job
            self.bar = tqdm(total=p.total, unit=self.unit, desc=desc, dynamic_ncols=True)
        for note in p.notes:
            self.bar.write(note)
        p.notes.clear()
        self.bar.total = max(p.total, p.done)
        self.bar.update(p.done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
