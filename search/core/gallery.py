"""The engine: one object per gallery home that the CLI and the app share.

A gallery home holds catalog.db, images/ (content-addressed store), index/ (FAISS caches of the
catalog, one per space; or a Milvus store, see search.vectorstore), models/ (checkpoints trained
for this gallery), cache/ and reports/. The catalog may be a PostgreSQL database instead
(GRACEFUL_CATALOG) and the image store a folder shared by several processes (GRACEFUL_IMAGES).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models import registry

from search.core.reports import Reports
from search.core.results import SearchHit, SearchResult
from search.errors import GalleryError
from search.settings import Settings, default_home
from search.storage.catalog import Catalog, ImageRow, catalog_exists, catalog_location, open_catalog
from search.storage.imagestore import ImageStore
from search.storage.vectorstore import (
    SpaceVectors,
    VectorStore,
    open_notice,
    open_store,
    store_config,
)

if TYPE_CHECKING:
    from models.embedder import Embedder


__all__ = ["GalleryCore", "GalleryError", "SearchHit", "SearchResult", "default_home"]

NO_MODEL = "this gallery has no model yet: index some photos first"


class GalleryCore(Reports):
    """The open gallery: catalog, image store, vector store, live indexes and models. The
    operations (search.ops) work on it; `search.api.Gallery` holds one (`g.core`) and calls
    one operation per verb. Its collaborators are passed in: `settings` (read once) and
    `models`, the provider every model comes from (tests pass numpy fakes)."""

    def __init__(self, home: Path, catalog: Catalog, settings: Settings | None = None,
                 models: registry.Models | None = None):
        self.home = Path(home)
        self.settings = settings or Settings.from_env()
        self.model_provider: registry.Models = models or registry.provider(self.settings.models)
        self.catalog = catalog
        self.store = ImageStore(self.settings.images or self.home / "images")  # may be shared
        self.queries_store = ImageStore(self.home / "queries")
        self.index_dir = self.home / "index"
        self.models_dir = self.home / "models"
        self.cache_dir = self.settings.features or self.home / "cache"  # may be shared
        self.reports_dir = self.home / "reports"
        self._indexes: dict[str, SpaceVectors] = {}
        self._vector_store: VectorStore | None = None
        self.notices: list[str] = []  # things repaired on the way, for the CLI and app to show
        self.lock = threading.RLock()  # one writer per process; SQLite guards across processes

    # -- opening --------------------------------------------------------------------------
    @classmethod
    def open(cls, home: Path | str | None = None, create: bool = True, *,
             store: str | None = None, milvus_uri: str | None = None,
             settings: Settings | None = None,
             models: registry.Models | None = None) -> "GalleryCore":
        """The gallery at `home` (default: `default_home()`), created if missing unless
        `create=False` (then a missing gallery is a GalleryError). A new gallery serves its
        vectors from `store` ("faiss" or "milvus" at `milvus_uri`; default: env GRACEFUL_STORE
        and GRACEFUL_MILVUS_URI, else faiss). `settings` (else read from the environment, once)
        and `models` (else GRACEFUL_MODELS, else the installed registry) are passed down."""
        settings = settings or Settings.from_env()
        home = Path(home).expanduser() if home else default_home(settings)
        location = catalog_location(home, settings.catalog)  # HOME/catalog.db or a URL
        try:  # a GRACEFUL_MODELS that does not load: one line, before anything is written
            models = models or registry.provider(settings.models)
        except ValueError as e:
            raise GalleryError(str(e)) from None
        gallery = cls(home, open_catalog(home, location, settings, create), settings, models)
        store = store or settings.store
        milvus_uri = milvus_uri or settings.milvus_uri
        if (store or milvus_uri) and not gallery.catalog.vectors.has_vectors():
            try:
                gallery.choose_store(store, milvus_uri)
            except GalleryError:
                gallery.close()
                raise
        return gallery

    @staticmethod
    def exists(home: Path | str | None = None, settings: Settings | None = None) -> bool:
        settings = settings or Settings.from_env()
        home = Path(home) if home else default_home(settings)
        return catalog_exists(catalog_location(home, settings.catalog))

    def close(self) -> None:
        if self._vector_store is not None:
            self._vector_store.close()
            self._vector_store = None
        self._indexes.clear()
        self.catalog.close()

    def __enter__(self) -> "GalleryCore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- models ---------------------------------------------------------------------------
    @property
    def model_dirs(self) -> list[Path]:
        return [self.models_dir]

    @property
    def active_model(self) -> str | None:
        return self.catalog.models.active_model

    @property
    def space(self) -> str | None:
        """The space that searches run in: the active model's."""
        name = self.active_model
        if name is None:
            return None
        row = self.catalog.models.model(name)
        return self.catalog.models.serving_space(name) or (row["space"] if row else None)

    def require_active_model(self) -> str:
        """`active_model` where a gallery needs one: GalleryError when it has none yet."""
        model = self.active_model
        if model is None:
            raise GalleryError(NO_MODEL)
        return model

    def require_space(self) -> str:
        """`space` where a gallery needs one: GalleryError when it has no model yet."""
        space = self.space
        if space is None:
            raise GalleryError(NO_MODEL)
        return space

    def space_for(self, model: Embedder) -> str:
        """Where `model` searches and writes: its own space once a gallery transform gave it
        one (`upgrade --transform`), else the space it declares."""
        return self.catalog.models.serving_space(model.name) or model.space

    def resolve_model(self, name: str) -> registry.ModelEntry:
        try:
            return self.model_provider.resolve(name, self.model_dirs)
        except registry.UnknownModelError as e:
            raise GalleryError(str(e)) from None
        except ValueError as e:  # unreadable checkpoint file
            raise GalleryError(str(e)) from None

    def import_checkpoint(self, name: str) -> str:
        """A checkpoint given by path is copied into this gallery's models/ first (see
        search.storage.modelfiles); returns the name to use from then on."""
        from search.storage.modelfiles import import_checkpoint

        return import_checkpoint(self.models_dir, name)

    def load_model(self, name: str) -> Embedder:
        name = self.import_checkpoint(name)
        try:
            return self.model_provider.load(name, self.model_dirs)
        except (registry.UnknownModelError, ValueError, RuntimeError) as e:
            raise GalleryError(str(e)) from None

    def model_entries(self) -> list[registry.ModelEntry]:
        """Every model this gallery can load (its provider's, with the gallery's checkpoints)."""
        return self.model_provider.available(self.model_dirs)

    def embedder(self) -> Embedder:
        return self.load_model(self.require_active_model())

    def register(self, model: Embedder) -> None:
        self.catalog.models.register_model(model.info.as_dict(), source=model.info.kind)

    def activate(self, model: Embedder, reason: str, space: str | None = None) -> None:
        """Make `model` the query (and ingest) model, in one transaction. `space`: where it
        serves from now on (a transform's own space); an upgrade without one returns it to the
        space it declares."""
        with self.catalog.transaction():
            self.register(model)
            if reason in ("upgrade", "transform"):
                self.catalog.models.set_serving_space(model.name, space if space != model.space else None)
            previous = self.active_model
            history = self.catalog.models.model_history()
            if previous and previous != model.name:
                history.append(previous)
            self.catalog.models.set_model_history(history)
            self.catalog.models.set_active_model(model.name)
            self.catalog.logs.log_event(reason, model=model.name, previous=previous,
                                        space=space or self.space_for(model))

    def ensure_model(self, requested: str | None) -> Embedder:
        """The model that ingest uses: the active one; a new gallery takes `requested`."""
        active = self.active_model
        if active is None:
            model = self.load_model(requested or self.model_provider.default)
            self.activate(model, "init")
            return model
        if requested and requested != active:
            wanted = self.resolve_model(requested)
            current = self.catalog.models.model(active)
            assert current is not None  # `activate` registered the active model
            raise GalleryError(
                f"this gallery is indexed with {active} (space {current['space']}); "
                f"{requested} (space {wanted.space or 'its own'}) is not its active model. "
                f"Switch with `graceful upgrade {requested}` first."
            )
        return self.embedder()

    # -- vector store and index -------------------------------------------------------------
    @property
    def vector_store(self) -> VectorStore:
        with self.lock:
            if self._vector_store is None:
                self._vector_store = open_store(self.home, self.catalog, self.settings)
            return self._vector_store

    def choose_store(self, kind: str | None, milvus_uri: str | None = None,
                     move: bool = False) -> dict:
        """Set where this gallery's search vectors live. A new gallery takes any store; one
        that has vectors keeps its store unless `move` (the new store is then filled from the
        catalog). Returns the recorded choice."""
        current = self.catalog.state.vector_store()
        if kind is None and milvus_uri is None:
            return current or {"kind": "faiss"}
        config = store_config(kind or (current or {}).get("kind", "milvus" if milvus_uri else "faiss"),
                              self.home, milvus_uri)
        if config == (current or {"kind": "faiss"}):
            if current is None:
                self.catalog.state.set_vector_store(config)
            return config
        has_vectors = self.catalog.vectors.has_vectors()
        if has_vectors and not move:
            where = (current or {"kind": "faiss"})
            raise GalleryError(
                f"this gallery keeps its vectors in {where['kind']}"
                + (f" ({where['uri']})" if where.get("uri") else "")
                + f"; to move them to {config['kind']} run `graceful reindex --store {config['kind']}"
                + (f" --milvus-uri {milvus_uri}" if milvus_uri else "") + "`")
        with self.lock:
            self._switch_store(config)
            if has_vectors and self.space:
                try:  # fill the new store now: a store that cannot be filled is not kept
                    self.rebuild_index(self.space)
                except BaseException as e:
                    self._switch_store(current)
                    if isinstance(e, GalleryError):
                        raise
                    raise GalleryError(f"could not fill {config['kind']} "
                                       f"({config.get('uri') or 'index files'}): {e}; the gallery "
                                       f"stays on {(current or {'kind': 'faiss'})['kind']}") from None
        return config

    def _switch_store(self, config: dict | None) -> None:
        """Record `config` (None: never chosen, i.e. FAISS) and drop what served the old one."""
        if self._vector_store is not None:
            self._vector_store.close()
            self._vector_store = None
        self._indexes.clear()
        with self.catalog.transaction():
            self.catalog.state.set_vector_store(config)

    def index(self, space: str | None = None) -> SpaceVectors | None:
        """The in-memory index of `space` (default: the active one), refreshed if stale."""
        space = space or self.space
        if space is None:
            return None
        with self.lock:
            current = self._indexes.get(space)
            version = self.catalog.vectors.space_version(space)  # the one query of a warm search
            if version == 0:
                return None  # no vectors in this space
            if current is not None and current.version < version:
                current.catch_up(self.catalog)  # another process (or job) wrote vectors
            elif current is None or current.version != version:
                # a read never trains or rebuilds a store: it serves what exists (save_indexes,
                # at the end of a write, builds what the setting says)
                current, how = self.vector_store.open(self.catalog, space, self.index_kind, False)
                if note := open_notice(self.vector_store.noun, space, how, current):
                    self.notices.append(note)
                self._indexes[space] = current
            return current

    @property
    def index_kind(self) -> str:
        return self.catalog.state.index_kind()

    def rebuild_index(self, space: str | None = None, kind: str | None = None) -> str:
        """Rebuild the index of `space` from the catalog (optionally switching its kind)."""
        space = space or self.require_space()
        with self.lock:
            if kind is not None:
                from search.storage.faiss_index import effective_kind

                effective_kind(kind, 0)  # validates
                self.catalog.state.set_index_kind(kind)
            self._indexes.pop(space, None)
            idx = self.vector_store.build(self.catalog, space, self.index_kind)
            self.vector_store.save(idx, self.catalog)
            self._indexes[space] = idx
            return idx.kind

    def write_vectors(self, image_ids: list[int], vectors: np.ndarray, model: Embedder) -> None:
        """Store vectors embedded by `model` in the space it serves, and a fused model's
        halves in their own spaces too (caller holds a transaction; `sync_index` updates the
        live index after the commit)."""
        self.catalog.vectors.put_vectors(image_ids, vectors, model.name, self.space_for(model))
        for part, half in getattr(model, "parts", lambda v: [])(vectors):
            self.catalog.vectors.put_vectors(image_ids, half, part.name, self.space_for(part))

    def sync_written(self, image_ids: list[int], vectors: np.ndarray, model: Embedder) -> None:
        """After a committed `write_vectors`: the live index of every space it wrote (a fused
        model's halves too, so their indexes are saved with the rest)."""
        self.sync_index(self.space_for(model), image_ids, vectors, model.name)
        for part, half in getattr(model, "parts", lambda v: [])(vectors):
            self.sync_index(self.space_for(part), image_ids, half, part.name)

    def sync_index(self, space: str, image_ids: list[int], vectors: np.ndarray,
                   model: str = "") -> None:
        """After a committed write of these vectors (by `model`): add them to the live index."""
        from search.storage.catalog import as_stored

        with self.lock:
            idx = self._indexes.get(space)
            version = self.catalog.vectors.space_version(space)
            if idx is None or idx.version + 1 != version:
                self.index(space)  # first vectors of this space, or another writer: catch up
                return
            idx.upsert(np.asarray(image_ids), as_stored(vectors), [model] * len(image_ids),
                       np.full(len(image_ids), version, np.int64))
            idx.version = version

    def save_indexes(self) -> None:
        """Save live indexes, caught up first (a Ctrl-C can land between a batch's commit and its
        index update); a failure (full disk) only costs a rebuild on the next open."""
        from search.errors import friendly

        with self.lock:
            for idx in list(self._indexes.values()):
                interim = getattr(idx, "interim", None)  # a read's stand-in: build the real one
                try:
                    if not interim and idx.version < self.catalog.vectors.space_version(idx.space):
                        idx.catch_up(self.catalog)
                except Exception:  # best effort: the next open catches up from the catalog
                    continue
                if interim or idx.version == self.catalog.vectors.space_version(idx.space):
                    try:
                        if interim:
                            self.rebuild_index(idx.space)
                        else:
                            self.vector_store.save(idx, self.catalog)
                    except (OSError, GalleryError) as e:
                        self.notices.append(f"could not save the {idx.space} "
                                            f"{self.vector_store.noun} "
                                            f"({friendly(e)}); it is rebuilt from the catalog "
                                            f"next time")

    # -- search ---------------------------------------------------------------------------
    def search_vectors(self, queries: np.ndarray, k: int, model: str, space: str | None = None
                       ) -> list[SearchResult]:
        space = space or self.space
        t0 = time.perf_counter()
        idx = self.index(space)
        if idx is None or space is None:  # (no space: no index either)
            raise GalleryError("the gallery is empty: index some photos first")
        scores, ids = idx.search(queries, k)
        rows, by = self.catalog.images.hit_rows({int(i) for i in ids.ravel() if i >= 0}, space)
        elapsed = (time.perf_counter() - t0) * 1000
        results = []
        for srow, irow in zip(scores, ids):
            hits = [
                SearchHit(r + 1, int(i), rows[int(i)].sha256, rows[int(i)].name,
                          str(self.image_path(rows[int(i)])), float(s), by.get(int(i), "?"))
                for r, (s, i) in enumerate(zip(srow, irow)) if i >= 0 and int(i) in rows
            ]
            results.append(SearchResult(model, space, k, elapsed, hits))
        return results

    def image_path(self, row: ImageRow) -> Path:
        return self.store.path(row.sha256, row.ext)

    def image_row(self, ref: str | int) -> ImageRow:
        """A gallery image by id or by (a prefix of) its sha256."""
        ref = str(ref)
        if ref.isdigit():
            rows = self.catalog.images.images([int(ref)])
            if rows:
                return next(iter(rows.values()))
        if len(ref) >= 6:
            found = self.catalog.images.image_ids_by_sha_prefix(ref)
            if len(found) == 1:
                return self.catalog.images.images(found)[found[0]]
        raise GalleryError(f"no gallery image {ref!r} (give an image id or a sha256 prefix)")
