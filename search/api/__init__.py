"""The API: `Gallery` (search/api/gallery.py) is the open gallery: verbs on top (add, search,
upgrade, rollback, backfill, reembed, train, compare, check, info, ...), nouns as handles
(g.photos, g.albums, g.models, g.reports, g.vectors; handles.py), typed reports (results.py)
and what needs no open gallery (tools.py). The CLI, the app and scripts use this package only."""
from __future__ import annotations

from search.api.gallery import HANDLES, Gallery
from search.api.results import (
    BackfillStatus,
    BridgeReport,
    ComparisonReport,
    FitEstimate,
    FitReport,
    InfoReport,
    MigrationReport,
    QueryLogState,
    ReindexResult,
    Report,
    TrainedModel,
)
from search.api.tools import (
    available_models,
    bench_compat,
    bench_generations,
    check_paths,
    train_on_dataset,
    verify_model,
)
from search.core import SearchHit, SearchResult
from search.errors import GalleryError
from search.settings import Settings, default_home
from search.storage.files import import_roots, links_outside
from search.storage.uploads import stage_uploads
from search.units import fit_name

__all__ = ["Gallery", "GalleryError", "SearchHit", "SearchResult", "Settings", "default_home",
           "import_roots", "links_outside", "stage_uploads", "fit_name", "BACKFILL_ORDERS",
           "available_models", "verify_model", "check_paths", "train_on_dataset",
           "bench_compat", "bench_generations", "HANDLES", "Report", "InfoReport",
           "ComparisonReport", "BackfillStatus", "QueryLogState", "FitEstimate",
           "ReindexResult", "TrainedModel", "FitReport", "BridgeReport", "MigrationReport"]

BACKFILL_ORDERS = ("random", "oldest", "most-retrieved", "uncertainty")


def __getattr__(name: str):
    """Types that cross the API (requests, results, refusals), loaded on first use."""
    where = {"Query": "search.ops.compare", "RayOptions": "search.ops.raypool",
             "PreflightRefused": "search.ops.upgrade", "FitRefused": "search.ops.fit",
             "UpgradeResult": "search.ops.upgrade", "ExtractionStopped": "models.features"}
    if name in where:
        import importlib

        return getattr(importlib.import_module(where[name]), name)
    raise AttributeError(f"module 'search.api' has no attribute {name!r}")
