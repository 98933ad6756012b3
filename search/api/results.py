"""What the API's verbs return, typed: frozen dataclasses whose fields are the keys of the
`--json` output (`as_dict()`, `to_json()`) and of the README's JSON contracts (`keys()`;
tests/test_fast.py holds the README to them). Nested parts stay plain JSON values."""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, ClassVar


@dataclass(frozen=True)
class Report:
    """A report: fields in the order of its JSON keys. `OPTIONAL`: keys left out when None.
    `KEYS`: JSON keys that cannot be field names (a keyword such as `from`), by field."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ()
    KEYS: ClassVar[dict[str, str]] = {}

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(cls.KEYS.get(f.name, f.name) for f in fields(cls))

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """From the JSON of `as_dict` (or a saved report); keys it does not know are dropped."""
        return cls(**{f.name: data.get(cls.KEYS.get(f.name, f.name)) for f in fields(cls)})

    def as_dict(self) -> dict[str, Any]:
        return {self.KEYS.get(f.name, f.name): getattr(self, f.name) for f in fields(self)
                if not (f.name in self.OPTIONAL and getattr(self, f.name) is None)}

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


@dataclass(frozen=True)
class FitReport(Report):
    """`graceful train --from-gallery --json` (`g.train`): an upgrade fitted to the gallery, its
    held-out measurement and the plan of every path. `path`: the checkpoint (None when not
    saved), `report`: the saved report."""
    name: str
    method: str
    requested_method: str
    backbone: str
    old_model: str
    space: str
    gallery_photos: int
    vector_only: bool
    photos_embedded: int
    sample: dict
    held_out: dict
    plan: list
    recommended: str | None
    recommendation: str
    measured: dict | None
    transform: dict
    blend: dict | None
    query_blend: dict | None
    next_command: list | None
    passed: bool
    verdict: str
    expectation: str
    reasons: list
    forced: bool
    gallery_state: dict
    seconds: dict
    images_per_second: float | None
    created_at: float
    path: str | None
    report: str


@dataclass(frozen=True)
class BridgeReport(Report):
    """`graceful train --from-gallery --json` of a label-free bridge (`method` "bridge"): the
    gallery and query maps, and every path measured against the whole gallery."""
    name: str
    method: str
    requested_method: str
    backbone: str
    new_space: str
    old_model: str
    space: str
    gallery_photos: int
    labelled: bool
    vector_only: bool
    photos_embedded: int
    sample: dict
    maps: dict
    plan: list
    recommended: str | None
    recommendation: str
    next_command: list | None
    weight: float
    measured: dict
    albums_unusable: str | None
    passed: bool
    verdict: str
    expectation: str
    forced: bool
    gallery_state: dict
    seconds: dict
    images_per_second: float
    created_at: float
    path: str | None
    earlier_predictions: list
    report: str


def fit_report(data: dict[str, Any]) -> FitReport | BridgeReport:
    """A fit's report, typed by its kind (a bridge's `method` is "bridge")."""
    return (BridgeReport if data.get("method") == "bridge" else FitReport).from_dict(data)


@dataclass(frozen=True)
class MigrationReport(Report):
    """`graceful migrate-catalog --json` (`g.migrate_catalog`): the catalog copied and verified.
    `from_` is the JSON key `from`."""
    from_: str
    to: str
    copied: dict
    tables: dict
    verified: bool
    use: str

    KEYS: ClassVar[dict[str, str]] = {"from_": "from"}
