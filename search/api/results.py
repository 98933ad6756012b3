"""What the API's verbs return, typed: frozen dataclasses whose fields are the keys of the
`--json` output (`as_dict()`, `to_json()`) and of the README's JSON contracts (`keys()`;
tests/test_api_surface.py holds the README to them). Nested parts stay plain JSON values."""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, ClassVar


@dataclass(frozen=True)
class Report:
    """A report: fields in the order of its JSON keys. `OPTIONAL`: keys left out when None."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """From the JSON of `as_dict` (or a saved report); keys it does not know are dropped."""
        return cls(**{k: data.get(k) for k in cls.keys()})

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.keys()
                if not (k in self.OPTIONAL and getattr(self, k) is None)}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.as_dict(), indent=indent, default=str)


@dataclass(frozen=True)
class InfoReport(Report):
    """`graceful info --json`: what the gallery holds."""
    home: str
    catalog: dict
    schema_version: int
    images: int
    albums: int
    active_model: str | None
    space: str | None
    index: dict
    index_kind: dict
    vector_store: dict
    runtimes: dict
    vectors: list
    models: list
    model_history: list
    serving: dict
    compatibility: dict


@dataclass(frozen=True)
class ComparisonReport(Report):
    """`graceful compare --json`: per-query gained and lost results between two models.
    `path`: where it was saved (absent when it was not)."""
    summary: dict
    queries: list
    created_at: float
    path: str | None = None

    OPTIONAL: ClassVar[tuple[str, ...]] = ("path",)


@dataclass(frozen=True)
class BackfillStatus(Report):
    """`graceful backfill --status --json`: how far the active model's re-embedding is."""
    model: str | None
    space: str | None
    images: int
    by_active_model: int
    older_vectors: int
    transformed: int
    missing: int
    fraction_backfilled: float


@dataclass(frozen=True)
class QueryLogState(Report):
    """Is the query log on, and how many searches it holds."""
    on: bool
    recorded: int


@dataclass(frozen=True)
class FitEstimate(Report):
    """Time to fit an upgrade on a backbone against a full backfill, at nominal speed."""
    photos: int
    sample: int
    fit_seconds: float
    backfill_seconds: float
    images_per_second: float


@dataclass(frozen=True)
class ReindexResult(Report):
    """`graceful reindex`: the rebuilt index of the searched space."""
    space: str
    kind: str
    setting: str
    vectors: int
    store: str
    seconds: float


@dataclass(frozen=True)
class TrainedModel(Report):
    """A compatible model trained against the gallery's (`g.models.train_compatible`)."""
    path: str
    name: str
    space: str
