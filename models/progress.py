"""The one progress type that every long job reports (ingest, backfill, re-embed, feature
extraction, fitting an upgrade, check): what, how far, how fast, how long to go."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field


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
        d["images_per_second"] = round(self.rate, 2)
        d["eta_seconds"] = round(self.eta_seconds, 1) if self.eta_seconds is not None else None
        return d
