"""The nouns of a `Gallery`, as handles: `g.photos`, `g.albums`, `g.models`, `g.reports`,
`g.vectors`. Each holds the gallery's core and answers questions about one kind of thing;
the verbs that change the gallery stay on `Gallery` itself."""
from __future__ import annotations

import builtins
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from search.api.results import (
    BridgeReport,
    ComparisonReport,
    FitEstimate,
    FitReport,
    TrainedModel,
    fit_report,
)
from search.core import GalleryCore
from search.errors import GalleryError
from search.units import fit_name

if TYPE_CHECKING:
    from models.embedder import Embedder
    from models.registry import ModelEntry

    from search.ops.backfill import CurveRecorder
    from search.storage.catalog import ImageRow


class _Handle:
    def __init__(self, core: GalleryCore):
        self._core = core

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._core.home}>"


class Photos(_Handle):
    """The gallery's photos: counts, pages, rows, files and who embedded them."""

    def count(self, album: str | None = None) -> int:
        return self._core.catalog.images.count_images(album)

    def list(self, offset: int, limit: int, album: str | None = None) -> list[ImageRow]:
        return self._core.catalog.images.list_images(offset, limit, album)

    def rows(self, ids: Iterable[int]) -> dict[int, ImageRow]:
        """Image rows by id."""
        return self._core.catalog.images.images(ids)

    def row(self, ref: str | int) -> ImageRow:
        """A photo by id or by (a prefix of) its sha256."""
        return self._core.image_row(ref)

    def path(self, row: ImageRow) -> Path:
        """The stored file of a photo."""
        return self._core.image_path(row)

    def embedded_by(self, ids: builtins.list[int]) -> dict[int, str]:
        """Which model computed each photo's vector in the serving space."""
        space = self._core.space
        return {} if space is None else self._core.catalog.vectors.serving_model_of(ids, space)


class Albums(_Handle):
    """The albums: the labels fitted upgrades and comparisons learn from."""

    def list(self) -> list[dict]:
        """`graceful albums --json`: `album` (None: no album) and `images` per album."""
        return self._core.catalog.images.albums()

    def set(self, refs: Iterable[str | int], album: str | None) -> int:
        """Put photos (ids or sha256 prefixes) into `album` (None: out of their album)."""
        core = self._core
        return core.catalog.images.set_album([core.image_row(ref).id for ref in refs], album)

    def rename(self, old: str, new: str) -> int:
        n = self._core.catalog.images.rename_album(old, new)
        if not n:
            raise GalleryError(f"no album called {old!r} (graceful albums lists them)")
        return n


class Models(_Handle):
    """The models: those registered, loadable and unreadable, the history, what is known of
    each against this gallery, names for new ones, and training one on a dataset."""

    def __init__(self, core: GalleryCore, verdicts: dict):
        super().__init__(core)
        self._verdicts = verdicts  # the Gallery's pre-flights run in this process

    def registered(self) -> list[dict]:
        """Models registered in this gallery (catalog rows)."""
        return self._core.catalog.models.models()

    def history(self) -> list[str]:
        """The models served before the active one, oldest first (rollback pops the last)."""
        return self._core.catalog.models.model_history()

    def available(self) -> list[ModelEntry]:
        """Registry entries this gallery can load (built-ins and its own checkpoints)."""
        return self._core.model_entries()

    def unreadable(self) -> list[tuple[Path, str]]:
        """The gallery's checkpoint files that cannot be read, with why."""
        return self._core.model_provider.unreadable(self._core.model_dirs)

    def serving_space(self, name: str) -> str | None:
        """The own space a transform gave `name`, if any."""
        return self._core.catalog.models.serving_space(name)

    def serving(self) -> dict:
        """How searches are served: mode (native, queries, fused), spaces and their weights."""
        from search.ops.modes import serving

        return serving(self._core)

    def compatibility(self) -> dict:
        """Query model x space: which can search which (`info --json`'s `compatibility`)."""
        from search.ops.info import compatibility_matrix

        return compatibility_matrix(self._core)

    def embedder(self) -> Embedder:
        """The active model, loaded."""
        return self._core.embedder()

    def load(self, name: str) -> Embedder:
        return self._core.load_model(name)

    def import_checkpoint(self, name: str) -> str:
        """A checkpoint given by path is copied into the gallery's models/; returns its name."""
        return self._core.import_checkpoint(name)

    def standing_verdict(self, entry: ModelEntry) -> str | None:
        """What is known, without embedding anything, about `entry` querying this gallery: its
        fit's measurement while the gallery is unchanged, else a pre-flight run by this Gallery
        (`upgrade`, a dry run included) in the space it now searches."""
        from search.ops.preflight import standing_verdict

        return standing_verdict(self._core, entry) or self._verdicts.get(
            (entry.name, self._core.space))

    def unused_name(self, name: str) -> str:
        """`name`, else the first of `name-2`, `name-3`, ... that no loadable model has."""
        taken = {e.name for e in self.available()}
        n, candidate = 1, name
        while candidate in taken:
            n += 1
            candidate = f"{name}-{n}"
        return candidate

    def fit_name(self, backbone: str) -> str:
        """The default name of an upgrade fitted on `backbone` (search.units.fit_name), unused."""
        return self.unused_name(fit_name(backbone, self._core.active_model))

    def fit_estimate(self, backbone: str, sample: int | None = None) -> FitEstimate:
        """Time to fit an upgrade on `backbone` against a full backfill, at nominal speed."""
        from search.ops.fit_sample import NOMINAL_IMAGES_PER_SECOND, estimate_seconds

        return FitEstimate.from_dict(estimate_seconds(
            self._core.catalog.images.count_images(), NOMINAL_IMAGES_PER_SECOND.get(backbone, 30.0),
            sample))

    def train_compatible(self, backbone: str, method: str, name: str, data: Path | None = None,
                         loss: str = "ce") -> TrainedModel:
        """A head on `backbone` trained against the active model (`graceful train --old
        ACTIVE`), `adapter` on the gallery's photos (data=None), `bct`/`pct` on a labelled
        folder."""
        from models.compat_train import TrainRequest, train_compatible
        from models.train import TrainConfig

        core = self._core
        if core.active_model is None:
            raise GalleryError("the gallery has no model yet: index photos first")
        if data is None and method != "adapter":
            raise GalleryError(f"{method} learns from labels: give a labelled folder")
        req = TrainRequest(core.active_model, backbone, method, Path(data or core.store.root),
                           name, core.models_dir, core.cache_dir,
                           config=TrainConfig(method, loss=loss), progress=False)
        path, meta = train_compatible(req)
        return TrainedModel(str(path), meta.name, meta.space)


class Reports(_Handle):
    """The gallery's saved reports (reports/KIND-TIMESTAMP-TAG.json): fits, comparisons,
    backfill curves, benchmarks."""

    def latest(self, kind: str) -> dict | None:
        """The newest saved report of `kind` (fit, compare, backfill-curve, ...), or None."""
        return self._core.latest_report(kind)

    def save(self, kind: str, tag: str, report: dict, path: Path | None = None) -> Path:
        return self._core.save_report(kind, tag, report, path)

    def fit(self) -> FitReport | BridgeReport | None:
        """The newest fit report, typed by its kind; a fit killed after saving its model but
        before rewriting its report still names the model it saved."""
        report = self.latest("fit")
        if not report:
            return None
        if report.get("path") is None and report.get("name"):
            saved = self._core.models_dir / f"{report['name']}.safetensors"
            if saved.is_file() and saved.stat().st_mtime >= report.get("created_at", 0):
                report["path"] = str(saved)
        return fit_report(report)

    def comparison(self) -> ComparisonReport | None:
        report = self.latest("compare")
        return ComparisonReport.from_dict(report) if report else None

    def backfill_curve(self) -> dict | None:
        """The newest quality-vs-fraction-backfilled curve (`backfill --curve`)."""
        return self.latest("backfill-curve")

    def curve_recorder(self, queries: Path) -> CurveRecorder:
        """A recorder of quality against the fraction backfilled, for `backfill(curve=...)`."""
        from search.ops.backfill import CurveRecorder

        return CurveRecorder(self._core, Path(queries))

    def bench(self) -> dict[str, dict]:
        """The saved `run_bench` results by name (bench-KIND-LOSS), oldest name first."""
        from search.ops.benchgen import bench_reports

        return bench_reports(self._core)

    def run_bench(self, kind: str, train: Path, test: Path, loss: str = "ce") -> dict:
        """`graceful bench chain|hetero` on a labelled train/test pair (search.ops.benchgen),
        saved as reports/bench-KIND-LOSS.json (see `bench`)."""
        from search.ops.benchgen import bench_generations

        return bench_generations(self._core, kind, train, test, loss)


class Vectors(_Handle):
    """Where the search vectors live: the vector store (FAISS index files or Milvus)."""

    def store(self) -> dict:
        """Which store serves the searches: {"kind": "faiss", ...} or Milvus's uri and mode."""
        return self._core.vector_store.describe()

    def choose_store(self, kind: str | None, milvus_uri: str | None = None,
                     move: bool = False) -> dict:
        """Set where the search vectors live: a new gallery takes any store; one with vectors
        keeps its own unless `move` (then the new store is filled from the catalog)."""
        return self._core.choose_store(kind, milvus_uri, move)
