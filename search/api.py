"""The API: `Gallery` is the open gallery (search.core) plus one method per operation. The CLI,
the app and scripts use this class only; quiet by default (`progress=True` draws bars on
stderr, a callable receives every `models.progress.Progress` report)."""
from __future__ import annotations

import json
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, TypeAlias

from models.progress import Progress, ProgressBar

from search.core import GalleryCore, SearchHit, SearchResult
from search.errors import GalleryError
from search.settings import Settings, default_home
from search.storage.files import import_roots, links_outside
from search.storage.uploads import stage_uploads
from search.units import fit_name

if TYPE_CHECKING:
    from search.ops.backfill import CurveRecorder
    from search.ops.check import CheckReport
    from search.ops.ingest import IngestReport
    from search.ops.raypool import RayOptions
    from search.ops.upgrade import RollbackResult, UpgradeResult

__all__ = ["Gallery", "GalleryError", "SearchHit", "SearchResult", "Settings", "default_home",
           "import_roots", "links_outside", "stage_uploads", "fit_name", "BACKFILL_ORDERS",
           "available_models", "verify_model", "FACE_CORE"]

ProgressArg: TypeAlias = "bool | Callable[[Progress], None]"
BACKFILL_ORDERS = ("random", "oldest", "most-retrieved", "uncertainty")
# What the faces may use of GalleryCore besides Gallery's own methods (tests/test_fast.py holds
# the app to it): the rest (catalog, stores, indexes, lock, folders) is the engine's.
FACE_CORE = ("home", "active_model", "space", "image_row", "image_path", "embedder", "close")


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


def available_models(home: Path | None = None) -> tuple[list, list[tuple[Path, str]]]:
    """Models this installation can load (built-ins, and the checkpoints in `home`/models),
    and the checkpoint files there that cannot be read, with why: no gallery is opened."""
    from models import registry

    dirs = [Path(home) / "models"] if home else []
    return registry.available(dirs), registry.unreadable(dirs)


def verify_model(name: str | None) -> None:
    """Load `name` (default: the default model) once, so that a bad one fails before a new
    gallery is created."""
    from models import registry

    try:
        registry.load(name or registry.DEFAULT_MODEL)
    except (registry.UnknownModelError, ValueError, RuntimeError) as e:
        raise GalleryError(str(e)) from None


class Gallery(GalleryCore):
    """`Gallery.open(home)`, then one call per operation (see search/__init__.py)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._verdicts: dict[tuple[str, str | None], str] = {}  # pre-flights run in this process

    def exclusive(self) -> AbstractContextManager:
        """`with g.exclusive():` one caller at a time (the app's sessions share one Gallery)."""
        return self.lock

    def take_notices(self) -> list[str]:
        """Things repaired on the way since the last call (e.g. an index rebuilt), to show once."""
        notes, self.notices[:] = list(self.notices), []
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
            return ingest(self, list(paths), model, on_progress=on_progress, album=album,
                          album_from_folder=album_from_folder, **options)

    @staticmethod
    def check_paths(paths: Iterable[str | Path]) -> None:
        """Refuse a missing path before anything is written (GalleryError)."""
        from search.storage.files import collect_files

        collect_files(paths)

    def count_images(self) -> int:
        return self.catalog.count_images()

    def list_images(self, offset: int, limit: int, album: str | None = None) -> list:
        return self.catalog.list_images(offset, limit, album)

    def images(self, ids: Iterable[int]) -> dict:
        """Image rows by id."""
        return self.catalog.images(ids)

    def embedded_by(self, ids: list[int]) -> dict[int, str]:
        """Which model computed each photo's vector in the serving space."""
        return self.catalog.serving_model_of(ids, self.space)

    # -- albums ---------------------------------------------------------------------------
    def albums(self) -> list[dict]:
        return self.catalog.albums()

    def set_album(self, refs: Iterable[str | int], album: str | None) -> int:
        """Put photos (ids or sha256 prefixes) into `album` (None: out of their album)."""
        return self.catalog.set_album([self.image_row(ref).id for ref in refs], album)

    def rename_album(self, old: str, new: str) -> int:
        n = self.catalog.rename_album(old, new)
        if not n:
            raise GalleryError(f"no album called {old!r} (graceful albums lists them)")
        return n

    # -- search ---------------------------------------------------------------------------
    def search(self, query=None, k: int = 10, *, text: str | None = None,
               image: str | int | None = None, model: str | None = None, log: bool = False,
               name: str = "") -> SearchResult:
        """Photos most like `query`: a file path, image bytes (labelled `name` in the query log)
        or a gallery image id; or a gallery photo `image` (id or sha256 prefix); or `text`
        (models with a text tower). Not logged unless `log=True`."""
        from search.ops import query as q

        if k < 1:
            raise GalleryError("k must be at least 1")
        if text is not None:
            return q.search_text(self, text, k, log)
        if image is not None:
            return q.search_gallery_image(self, image, k, log, model)
        if isinstance(query, (bytes, bytearray)):
            return q.search_bytes(self, bytes(query), k, name, log, model)
        if isinstance(query, int):
            return q.search_gallery_image(self, query, k, log, model)
        if query is None:
            raise GalleryError("give a query image (path, bytes or gallery id) or text=")
        return q.search_file(self, query, k, log, model)

    def query_log(self, on: bool | None = None) -> dict:
        """Turn the query log on or off (None: leave it); returns its state."""
        if on is not None:
            self.catalog.set_log_queries(on)
        return {"on": self.catalog.log_queries(), "recorded": self.catalog.count_logged_queries()}

    # -- models ---------------------------------------------------------------------------
    def models(self) -> list[dict]:
        """Models registered in this gallery (catalog rows)."""
        return self.catalog.models()

    def model_history(self) -> list[str]:
        return self.catalog.model_history()

    def serving_space(self, name: str) -> str | None:
        """The own space a transform gave `name`, if any."""
        return self.catalog.serving_space(name)

    def available_models(self) -> list:
        """Registry entries this gallery can load (built-ins and its own checkpoints)."""
        return self.model_entries()

    def unreadable_models(self) -> list[tuple[Path, str]]:
        return self.model_provider.unreadable(self.model_dirs)

    def standing_verdict(self, entry) -> str | None:
        """What is known, without embedding anything, about `entry` querying this gallery: its
        fit's measurement while the gallery is unchanged, else a pre-flight run by this Gallery
        (`upgrade`, a dry run included) in the space it now searches."""
        from search.ops.preflight import standing_verdict

        return standing_verdict(self, entry) or self._verdicts.get((entry.name, self.space))

    def unused_name(self, name: str) -> str:
        """`name`, else the first of `name-2`, `name-3`, ... that no loadable model has."""
        taken = {e.name for e in self.available_models()}
        n, candidate = 1, name
        while candidate in taken:
            n += 1
            candidate = f"{name}-{n}"
        return candidate

    def fit_name(self, backbone: str) -> str:
        """The default name of an upgrade fitted on `backbone` (search.units.fit_name), unused."""
        return self.unused_name(fit_name(backbone, self.active_model))

    def store_description(self) -> dict:
        """Which vector store serves the searches: {"kind": "faiss"} or Milvus's uri and mode."""
        return self.vector_store.describe()

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
                result = upgrade(self, name, force=force, dry_run=dry_run,
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

    def serving(self) -> dict:
        """How searches are served: mode (native, queries, fused), spaces and their weights."""
        from search.ops.modes import serving

        return serving(self)

    def rollback(self) -> "RollbackResult":
        from search.ops.upgrade import rollback

        return rollback(self)

    def backfill(self, order: str = "random", limit: int | None = None, *, batch_size: int = 16,
                 progress: ProgressArg = False, ray: "RayOptions | None" = None,
                 curve: "CurveRecorder | None" = None, should_stop=None):
        """Re-embed older vectors with the active model (optional, resumable; on Ray workers
        with `ray=RayOptions(...)`); returns its Progress."""
        from search.ops.backfill import backfill

        with _reporter(progress) as on_progress:
            return backfill(self, order, limit, batch_size, should_stop=should_stop,
                            on_progress=on_progress, curve=curve, ray=ray)

    def backfill_curve(self, queries: Path) -> "CurveRecorder":
        """A recorder of quality against the fraction backfilled, for `backfill(curve=...)`."""
        from search.ops.backfill import CurveRecorder

        return CurveRecorder(self, Path(queries))

    def backfill_status(self) -> dict:
        from search.ops.backfill import status

        return status(self)

    def latest_backfill_curve(self) -> dict | None:
        return self.latest_report("backfill-curve")

    def reembed(self, name: str, *, batch_size: int = 16, switch: bool = True,
                progress: ProgressArg = False, ray: "RayOptions | None" = None,
                should_stop=None):
        """Re-embed every photo with an incompatible model into its own space; switch when
        complete. Returns (Progress, switched)."""
        from search.ops.reembed import reembed

        with _reporter(progress) as on_progress:
            return reembed(self, name, batch_size, switch, should_stop=should_stop,
                           on_progress=on_progress, ray=ray)

    def train(self, backbone: str, out: str, method: str = "auto", *, sample: int | None = None,
              loss: str = "ce", epochs: int = 30, force: bool = False, replace: bool = False,
              progress: ProgressArg = False, should_stop=None) -> dict:
        """Fit an upgrade to this gallery (`graceful train --from-gallery`); returns its
        report. A model measured worse raises FitRefused unless `force`."""
        from search.ops.bridge import fit_bridge, wants_bridge
        from search.ops.fit import FitRequest, fit_upgrade

        with _reporter(progress) as on_progress:
            req = FitRequest(backbone, out, method, sample, loss, epochs, force=force,
                             replace=force or replace, on_progress=on_progress,
                             should_stop=should_stop)
            return (fit_bridge if wants_bridge(self, req) else fit_upgrade)(self, req)

    def latest_fit_report(self) -> dict | None:
        """The newest fit report; a fit killed after saving its model but before rewriting its
        report still names the model it saved."""
        report = self.latest_report("fit")
        if report and report.get("path") is None and report.get("name"):
            saved = self.models_dir / f"{report['name']}.safetensors"
            if saved.is_file() and saved.stat().st_mtime >= report.get("created_at", 0):
                report["path"] = str(saved)
        return report

    def train_compatible(self, backbone: str, method: str, name: str, data: Path | None = None,
                         loss: str = "ce") -> dict:
        """A head on `backbone` trained against the active model (`graceful train --old ACTIVE`),
        `adapter` on the gallery's photos (data=None), `bct`/`pct` on a labelled folder."""
        from models.compat_train import TrainRequest, train_compatible
        from models.train import TrainConfig

        if self.active_model is None:
            raise GalleryError("the gallery has no model yet: index photos first")
        if data is None and method != "adapter":
            raise GalleryError(f"{method} learns from labels: give a labelled folder")
        req = TrainRequest(self.active_model, backbone, method, Path(data or self.store.root),
                           name, self.models_dir, self.cache_dir,
                           config=TrainConfig(method, loss=loss), progress=False)
        path, meta = train_compatible(req)
        return {"path": str(path), "name": meta.name, "space": meta.space}

    def fit_estimate(self, backbone: str, sample: int | None = None) -> dict:
        """Time to fit an upgrade on `backbone` against a full backfill, at nominal speed."""
        from search.ops.fit_sample import NOMINAL_IMAGES_PER_SECOND, estimate_seconds

        return estimate_seconds(self.count_images(),
                                NOMINAL_IMAGES_PER_SECOND.get(backbone, 30.0), sample)

    # -- measuring ------------------------------------------------------------------------
    def compare(self, queries="log", old: str | None = None, new: str | None = None, k: int = 10,
                save: bool = True) -> dict:
        """Per-query gained/lost results between two models. `queries`: a folder (labelled
        when it has one sub-folder per class), "log" (the query log) or a list of `Query`."""
        from search.ops import compare as cmp

        history = self.catalog.model_history()
        old = old or (history[-1] if history else None)
        if old is None:
            raise GalleryError("no previous model to compare with: name the old model "
                               "(old=..., or --old NAME on the command line)")
        if isinstance(queries, str) and queries == "log":
            queries = cmp.queries_from_log(self)
            if not queries:
                raise GalleryError("the query log holds no searches yet: turn it on (graceful log "
                                   "on), search, then compare; or compare on a folder of photos")
        elif isinstance(queries, (str, Path)):
            queries = cmp.queries_from_folder(Path(queries))
        return cmp.compare(self, old, new or self.active_model, list(queries), k, save)

    def latest_comparison(self) -> dict | None:
        return self.latest_report("compare")

    def check(self, repair: bool = False, progress: ProgressArg = False) -> "CheckReport":
        from search.ops.check import check

        with _reporter(progress, "photo") as on_progress:
            return check(self, repair, on_progress=on_progress)

    def bench_generations(self, kind: str, train: Path, test: Path, loss: str = "ce") -> dict:
        """`graceful bench chain|hetero` on a labelled train/test pair (models.evaluation.
        generations), saved as reports/bench-KIND-LOSS.json (see `bench_reports`)."""
        from models.evaluation.generations import GenConfig, chain, hetero

        if kind not in ("chain", "hetero"):
            raise GalleryError(f"unknown benchmark {kind!r}: chain or hetero")
        cfg = GenConfig(Path(train), Path(test), self.cache_dir, loss=loss, progress=False)
        result = {**(chain if kind == "chain" else hetero)(cfg), "loss": loss}
        self.save_report("bench", kind, result, self.reports_dir / f"bench-{kind}-{loss}.json")
        return result

    def bench_reports(self) -> dict[str, dict]:
        """The saved `bench_generations` results by name (bench-KIND-LOSS), oldest name first."""
        return {p.stem: json.loads(p.read_text())
                for p in sorted(self.reports_dir.glob("bench-*.json"))}

    def info(self) -> dict:
        from search.ops.info import info

        return info(self)

    def compatibility_matrix(self) -> dict:
        from search.ops.info import compatibility_matrix

        return compatibility_matrix(self)


def __getattr__(name: str):
    """Types that cross the API (requests, results, refusals), loaded on first use."""
    where = {"Query": "search.ops.compare", "RayOptions": "search.ops.raypool",
             "PreflightRefused": "search.ops.upgrade", "FitRefused": "search.ops.fit",
             "UpgradeResult": "search.ops.upgrade", "ExtractionStopped": "models.features"}
    if name in where:
        import importlib

        return getattr(importlib.import_module(where[name]), name)
    raise AttributeError(f"module 'search.api' has no attribute {name!r}")
