"""`Gallery`: the open gallery as people and the faces use it. It holds the engine's
`GalleryCore` (`g.core`, for tests and advanced scripts; the faces never use it) and passes it
to one operation per verb; the nouns are handles (`g.photos`, `g.albums`, `g.models`,
`g.reports`, `g.vectors`, search/api/handles.py). Quiet by default (`progress=True` draws
bars on stderr, a callable receives every `models.progress.Progress` report)."""
from __future__ import annotations

import time
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, TypeAlias

from models.progress import Progress, ProgressBar

from search.api.handles import Albums, Models, Photos, Reports, Vectors
from search.api.results import (
    BackfillStatus,
    BridgeReport,
    ComparisonReport,
    FitReport,
    InfoReport,
    MigrationReport,
    QueryLogState,
    ReindexResult,
    fit_report,
)
from search.core import GalleryCore, SearchResult
from search.errors import GalleryError
from search.settings import Settings

if TYPE_CHECKING:
    from models import registry

    from search.ops.backfill import CurveRecorder
    from search.ops.check import CheckReport
    from search.ops.ingest import IngestReport
    from search.ops.raypool import RayOptions
    from search.ops.upgrade import RollbackResult, UpgradeResult

ProgressArg: TypeAlias = "bool | Callable[[Progress], None]"
# The nouns: each a handle on every Gallery (an attribute of that name), by its class.
HANDLES = {"photos": Photos, "albums": Albums, "models": Models, "reports": Reports,
           "vectors": Vectors}


@contextmanager
def _reporter(progress, unit: str = "img") -> Iterator[Callable[[Progress], None] | None]:
    """`progress` as a callback: True draws a bar (closed at the end), a callable is used as is."""
    if callable(progress):
        yield progress
    elif progress:
        bar = ProgressBar(unit)
        try:
            yield bar
        finally:
            bar.close()
    else:
        yield None


class Gallery:
    """`Gallery.open(home)`, then one call per operation (see search/__init__.py)."""

    def __init__(self, core: GalleryCore):
        self._core = core
        self._verdicts: dict[tuple[str, str | None], str] = {}  # pre-flights run in this process
        self.photos = Photos(core)
        self.albums = Albums(core)
        self.models = Models(core, self._verdicts)
        self.reports = Reports(core)
        self.vectors = Vectors(core)

    # -- opening --------------------------------------------------------------------------
    @classmethod
    def open(cls, home: Path | str | None = None, create: bool = True, *,
             store: str | None = None, milvus_uri: str | None = None,
             settings: Settings | None = None,
             models: "registry.Models | None" = None) -> "Gallery":
        """The gallery at `home` (default: `default_home()`), created if missing unless
        `create=False`. Collaborators passed in: `settings` (else read from the environment,
        once) and `models`, the provider every model comes from (default: the installed
        registry). A new gallery serves its vectors from `store` ("faiss" or "milvus" at
        `milvus_uri`; see GalleryCore.open)."""
        return cls(GalleryCore.open(home, create, store=store, milvus_uri=milvus_uri,
                                    settings=settings, models=models))

    @staticmethod
    def exists(home: Path | str | None = None, settings: Settings | None = None) -> bool:
        """Is there a gallery (its catalog) at `home`, with these settings' catalog?"""
        return GalleryCore.exists(home, settings)

    def close(self) -> None:
        self._core.close()

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def core(self) -> GalleryCore:
        """The engine underneath (catalog, stores, indexes): for tests and advanced scripts.
        The CLI and the app never use it (tests/test_fast.py)."""
        return self._core

    @property
    def home(self) -> Path:
        return self._core.home

    @property
    def active_model(self) -> str | None:
        return self._core.active_model

    @property
    def space(self) -> str | None:
        """The space searches run in: the active model's."""
        return self._core.space

    def exclusive(self) -> AbstractContextManager:
        """`with g.exclusive():` one caller at a time (the app's sessions share one Gallery)."""
        return self._core.lock

    def take_notices(self) -> list[str]:
        """Things repaired on the way since the last call (e.g. an index rebuilt), to show once."""
        notes, self._core.notices[:] = list(self._core.notices), []
        return notes

    # -- photos ---------------------------------------------------------------------------
    def add(self, paths, *, album: str | None = None, album_from_folder: bool = True,
            model: str | None = None, progress: ProgressArg = False,
            **options) -> "IngestReport":
        """Index photos (files or folders, any iterable of paths); returns an IngestReport.
        `options`: batch_size, workers, should_stop, ray, roots (see search.ops.ingest)."""
        from search.ops.ingest import ingest

        if isinstance(paths, (str, Path)):
            paths = [paths]
        with _reporter(progress) as on_progress:
            return ingest(self._core, list(paths), model, on_progress=on_progress, album=album,
                          album_from_folder=album_from_folder, **options)

    def search(self, query=None, k: int = 10, *, text: str | None = None,
               image: str | int | None = None, model: str | None = None, log: bool = False,
               name: str = "") -> SearchResult:
        """Photos most like `query`: a file path, image bytes (labelled `name` in the query log)
        or a gallery image id; or a gallery photo `image` (id or sha256 prefix); or `text`
        (models with a text tower). Not logged unless `log=True`."""
        from search.ops import query as q

        core = self._core
        if k < 1:
            raise GalleryError("k must be at least 1")
        if text is not None:
            return q.search_text(core, text, k, log)
        if image is not None:
            return q.search_gallery_image(core, image, k, log, model)
        if isinstance(query, (bytes, bytearray)):
            return q.search_bytes(core, bytes(query), k, name, log, model)
        if isinstance(query, int):
            return q.search_gallery_image(core, query, k, log, model)
        if query is None:
            raise GalleryError("give a query image (path, bytes or gallery id) or text=")
        return q.search_file(core, query, k, log, model)

    def query_log(self, on: bool | None = None) -> QueryLogState:
        """Turn the query log on or off (None: leave it); returns its state."""
        catalog = self._core.catalog
        if on is not None:
            catalog.state.set_log_queries(on)
        return QueryLogState(catalog.state.log_queries(), catalog.logs.count_logged_queries())

    # -- upgrades -------------------------------------------------------------------------
    def upgrade(self, name: str, *, force: bool = False, dry_run: bool = False,
                sample: int | None = None, transform: bool = False, mode: str | None = None,
                weight: float | None = None, progress: ProgressArg = False,
                should_stop=None) -> "UpgradeResult":
        """Switch the query model after its pre-flight check; returns an UpgradeResult (a
        refusal raises PreflightRefused, whose `.result` says what was measured). With
        `transform`, the stored vectors move into the model's own space first."""
        from search.ops.preflight import PREFLIGHT_SAMPLE
        from search.ops.upgrade import PreflightRefused, upgrade

        space = self.space
        try:
            with _reporter(progress, "vec") as on_progress:
                result = upgrade(self._core, name, force=force, dry_run=dry_run,
                                 sample=sample or PREFLIGHT_SAMPLE, transform=transform,
                                 should_stop=should_stop, on_progress=on_progress, mode=mode,
                                 weight=weight)
        except PreflightRefused as e:  # remembered for standing_verdict, as a dry run is
            if (p := e.result.preflight) is not None:
                self._verdicts[(name, space)] = f"no: {p.verdict} on {p.sample} photos"
            raise
        if dry_run and (p := result.preflight) is not None:
            self._verdicts[(name, space)] = (f"{'yes' if p.passed else 'no'}: {p.verdict}" + (
                " (loses results)" if p.flags else "") + f" on {p.sample} photos")
        return result

    def rollback(self) -> "RollbackResult":
        from search.ops.upgrade import rollback

        return rollback(self._core)

    def backfill(self, order: str = "random", limit: int | None = None, *, batch_size: int = 16,
                 progress: ProgressArg = False, ray: "RayOptions | None" = None,
                 curve: "CurveRecorder | None" = None, should_stop=None) -> Progress:
        """Re-embed older vectors with the active model (optional, resumable; on Ray workers
        with `ray=RayOptions(...)`; `curve`: g.reports.curve_recorder(folder)); returns its
        Progress."""
        from search.ops.backfill import backfill

        with _reporter(progress) as on_progress:
            return backfill(self._core, order, limit, batch_size, should_stop=should_stop,
                            on_progress=on_progress, curve=curve, ray=ray)

    def backfill_status(self) -> BackfillStatus:
        from search.ops.backfill import status

        return BackfillStatus.from_dict(status(self._core))

    def reembed(self, name: str, *, batch_size: int = 16, switch: bool = True,
                progress: ProgressArg = False, ray: "RayOptions | None" = None,
                should_stop=None) -> tuple[Progress, bool]:
        """Re-embed every photo with an incompatible model into its own space; switch when
        complete. Returns (Progress, switched)."""
        from search.ops.reembed import reembed

        with _reporter(progress) as on_progress:
            return reembed(self._core, name, batch_size, switch, should_stop=should_stop,
                           on_progress=on_progress, ray=ray)

    def train(self, backbone: str, out: str, method: str = "auto", *, sample: int | None = None,
              loss: str = "ce", epochs: int = 30, force: bool = False, replace: bool = False,
              progress: ProgressArg = False, should_stop=None) -> FitReport | BridgeReport:
        """Fit an upgrade to this gallery (`graceful train --from-gallery`); returns its
        report (a BridgeReport for a label-free bridge to another space). A model measured
        worse raises FitRefused (its `.report` the same JSON) unless `force`."""
        from search.ops.bridge import fit_bridge, wants_bridge
        from search.ops.fit import FitRequest, fit_upgrade

        with _reporter(progress) as on_progress:
            req = FitRequest(backbone, out, method, sample, loss, epochs, force=force,
                             replace=force or replace, on_progress=on_progress,
                             should_stop=should_stop)
            fit = fit_bridge if wants_bridge(self._core, req) else fit_upgrade
            return fit_report(fit(self._core, req))

    # -- measuring ------------------------------------------------------------------------
    def compare(self, queries="log", old: str | None = None, new: str | None = None, k: int = 10,
                save: bool = True) -> ComparisonReport:
        """Per-query gained/lost results between two models. `queries`: a folder (labelled
        when it has one sub-folder per class), "log" (the query log) or a list of `Query`."""
        from search.ops import compare as cmp

        history = self._core.catalog.models.model_history()
        old = old or (history[-1] if history else None)
        if old is None:
            raise GalleryError("no previous model to compare with: name the old model "
                               "(old=..., or --old NAME on the command line)")
        if isinstance(queries, str) and queries == "log":
            queries = cmp.queries_from_log(self._core)
            if not queries:
                raise GalleryError("the query log holds no searches yet: turn it on (graceful log "
                                   "on), search, then compare; or compare on a folder of photos")
        elif isinstance(queries, (str, Path)):
            queries = cmp.queries_from_folder(Path(queries))
        new = new or self.active_model
        if new is None:
            raise GalleryError("the gallery has no model yet: index some photos first")
        return ComparisonReport.from_dict(cmp.compare(self._core, old, new, list(queries), k, save))

    def check(self, repair: bool = False, progress: ProgressArg = False) -> "CheckReport":
        from search.ops.check import check

        with _reporter(progress, "photo") as on_progress:
            return check(self._core, repair, on_progress=on_progress)

    def migrate_catalog(self, to: str, progress: ProgressArg = False) -> MigrationReport:
        """Copy this gallery's catalog to `to` (postgresql:// URL or SQLite file), resumable
        and verified; this gallery keeps its catalog until the setting names the new one."""
        from search.ops.migrate import migrate_catalog

        with _reporter(progress, "row") as on_progress:
            return MigrationReport.from_dict(
                migrate_catalog(self._core, to, on_progress=on_progress))

    def info(self) -> InfoReport:
        from search.ops.info import info

        return InfoReport.from_dict(info(self._core))

    def reindex(self, kind: str | None = None, *, store: str | None = None,
                milvus_uri: str | None = None) -> ReindexResult:
        """Rebuild the searched space's index from the catalog (`kind`: switch its kind, kept
        for the gallery); with `store`/`milvus_uri`, move the search vectors there first."""
        core = self._core
        if core.space is None:
            raise GalleryError("the gallery is empty: nothing to index")
        t0 = time.perf_counter()
        moved = bool(store or milvus_uri)
        if moved:
            core.choose_store(store, milvus_uri, move=True)  # fills the new store
        built = core.rebuild_index(kind=kind) if kind or not moved else None
        idx = core.index()
        assert idx is not None
        return ReindexResult(core.space, built or idx.kind, core.index_kind, idx.ntotal,
                             core.vector_store.kind, round(time.perf_counter() - t0, 3))
