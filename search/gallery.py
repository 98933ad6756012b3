"""The engine: one object per gallery home that the CLI and the app share.

A gallery home holds catalog.db, images/ (content-addressed store), index/ (FAISS caches of the
catalog, one per space; or a Milvus store, see search.vectorstore), models/ (checkpoints trained
for this gallery), cache/ and reports/.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models import registry

from .storage.catalog import Catalog, ImageRow
from .errors import GalleryError
from .home import default_home
from .store import ImageStore
from .vectorstore import SpaceVectors, VectorStore, open_store, store_config

if TYPE_CHECKING:
    from models.embedder import Embedder

    from .raypool import RayOptions

__all__ = ["Gallery", "GalleryError", "SearchHit", "SearchResult", "default_home"]


@dataclass
class SearchHit:
    rank: int
    image_id: int
    sha256: str
    name: str
    path: str
    score: float
    embedded_by: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResult:
    model: str
    space: str
    k: int
    elapsed_ms: float
    hits: list[SearchHit]

    def as_dict(self) -> dict:
        return {"model": self.model, "space": self.space, "k": self.k,
                "elapsed_ms": round(self.elapsed_ms, 3),
                "results": [h.as_dict() for h in self.hits]}


class Gallery:
    def __init__(self, home: Path, catalog: Catalog):
        self.home = Path(home)
        self.catalog = catalog
        self.store = ImageStore(self.home / "images")
        self.queries_store = ImageStore(self.home / "queries")
        self.index_dir = self.home / "index"
        self.models_dir = self.home / "models"
        self.cache_dir = self.home / "cache"
        self.reports_dir = self.home / "reports"
        self._indexes: dict[str, SpaceVectors] = {}
        self._vector_store: VectorStore | None = None
        self.notices: list[str] = []  # things repaired on the way, for the CLI and app to show
        self.lock = threading.RLock()  # one writer per process; SQLite guards across processes

    # -- opening --------------------------------------------------------------------------
    @classmethod
    def open(cls, home: Path | str | None = None, create: bool = True, *,
             store: str | None = None, milvus_uri: str | None = None) -> "Gallery":
        """The gallery at `home` (default: `default_home()`), created if missing unless
        `create=False` (then a missing gallery is a GalleryError). A new gallery serves its
        vectors from `store` ("faiss" or "milvus" at `milvus_uri`; default: env GRACEFUL_STORE
        and GRACEFUL_MILVUS_URI, else faiss)."""
        import os
        import sqlite3

        from .errors import friendly

        home = Path(home).expanduser() if home else default_home()
        db_path = home / "catalog.db"
        if not db_path.exists():
            if not create:
                raise GalleryError(
                    f"no gallery at {home}: index some photos first (graceful index PATH) "
                    "or point --home / GRACEFUL_HOME at an existing gallery"
                )
            home.mkdir(parents=True, exist_ok=True)
        elif db_path.stat().st_size == 0 and any((home / d).is_dir() and any((home / d).iterdir())
                                                  for d in ("images", "index")):
            # A new catalog is empty for a moment; one next to stored photos has lost its data.
            raise GalleryError(
                f"{db_path} is empty (0 bytes) but the gallery holds photos: the catalog was lost. "
                f"Restore catalog.db from a backup, or move it away and re-index the stored photos "
                f"(graceful index {home / 'images'})")
        try:
            gallery = cls(home, Catalog(db_path))
        except sqlite3.DatabaseError as e:
            raise GalleryError(f"cannot open the gallery at {home}: {friendly(e)}") from None
        store = store or os.environ.get("GRACEFUL_STORE") or None
        milvus_uri = milvus_uri or os.environ.get("GRACEFUL_MILVUS_URI") or None
        if (store or milvus_uri) and not gallery.catalog.has_vectors():
            try:
                gallery.choose_store(store, milvus_uri)
            except GalleryError:
                gallery.close()
                raise
        return gallery

    @staticmethod
    def exists(home: Path | str | None = None) -> bool:
        return ((Path(home) if home else default_home()) / "catalog.db").exists()

    def close(self) -> None:
        if self._vector_store is not None:
            self._vector_store.close()
            self._vector_store = None
        self._indexes.clear()
        self.catalog.close()

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the Python API: one object, quiet by default (the CLI and app turn progress on) ----
    def add(self, paths, *, album: str | None = None, album_from_folder: bool = True,
            model: str | None = None, progress: bool = False, **options):
        """Index photos (files or folders, any iterable of paths); returns an IngestReport."""
        from .ingest import ingest

        if isinstance(paths, (str, Path)):
            paths = [paths]
        return ingest(self, list(paths), model, progress=progress, album=album,
                      album_from_folder=album_from_folder, **options)

    def search(self, query=None, k: int = 10, *, text: str | None = None,
               model: str | None = None, log: bool = False) -> "SearchResult":
        """Photos most like `query`: a file path, image bytes or a gallery image id; or `text`
        (models with a text tower). Not logged unless `log=True`."""
        from . import query as q

        if k < 1:
            raise GalleryError("k must be at least 1")
        if text is not None:
            return q.search_text(self, text, k, log)
        if isinstance(query, (bytes, bytearray)):
            return q.search_bytes(self, bytes(query), k, "", log, model)
        if isinstance(query, int):
            return q.search_gallery_image(self, query, k, log, model)
        if query is None:
            raise GalleryError("give a query image (path, bytes or gallery id) or text=")
        return q.search_file(self, query, k, log, model)

    def upgrade(self, name: str, *, force: bool = False, dry_run: bool = False,
                transform: bool = False, progress: bool = False):
        """Switch the query model after its pre-flight check; returns an UpgradeResult (a
        refusal raises PreflightRefused, whose `.result` says what was measured). With
        `transform`, the stored vectors move into the model's own space first."""
        from .upgrade import upgrade

        return upgrade(self, name, force=force, dry_run=dry_run, transform=transform,
                       progress=progress)

    def rollback(self):
        from .upgrade import rollback

        return rollback(self)

    def backfill(self, order: str = "random", limit: int | None = None, *, progress: bool = False,
                 ray: "RayOptions | None" = None):
        """Re-embed older vectors with the active model (optional, resumable; on Ray workers
        with `ray=RayOptions(...)`)."""
        from .backfill import backfill

        return backfill(self, order, limit, progress=progress, ray=ray)

    def compare(self, queries, old: str | None = None, new: str | None = None, k: int = 10,
                save: bool = True) -> dict:
        """Per-query gained/lost results between two models. `queries`: a folder (labelled
        when it has one sub-folder per class) or a list of `search.compare.Query`."""
        from . import compare as cmp

        history = self.catalog.model_history()
        old = old or (history[-1] if history else None)
        if old is None:
            raise GalleryError("no previous model to compare with: name the old model "
                               "(old=..., or --old NAME on the command line)")
        if isinstance(queries, (str, Path)):
            queries = cmp.queries_from_folder(Path(queries))
        return cmp.compare(self, old, new or self.active_model, list(queries), k, save)

    def train(self, backbone: str, out: str, method: str = "auto", *, sample: int | None = None,
              force: bool = False, progress: bool = False) -> dict:
        """Fit an upgrade to this gallery (`graceful train --from-gallery`); returns its
        report. A model measured worse raises FitRefused unless `force`."""
        from .fit import FitRequest, fit_upgrade

        return fit_upgrade(self, FitRequest(backbone, out, method, sample, force=force,
                                            replace=force, progress=progress))

    def check(self, repair: bool = False):
        from .check import check

        return check(self, repair)

    # -- models ---------------------------------------------------------------------------
    @property
    def model_dirs(self) -> list[Path]:
        return [self.models_dir]

    @property
    def active_model(self) -> str | None:
        return self.catalog.active_model

    @property
    def space(self) -> str | None:
        """The space that searches run in: the active model's."""
        name = self.active_model
        if name is None:
            return None
        row = self.catalog.model(name)
        return self.catalog.serving_space(name) or (row["space"] if row else None)

    def space_for(self, model: Embedder) -> str:
        """Where `model` searches and writes: its own space once a gallery transform gave it
        one (`upgrade --transform`), else the space it declares."""
        return self.catalog.serving_space(model.name) or model.space

    def resolve_model(self, name: str) -> registry.ModelEntry:
        try:
            return registry.resolve(name, self.model_dirs)
        except registry.UnknownModelError as e:
            raise GalleryError(str(e)) from None
        except ValueError as e:  # unreadable checkpoint file
            raise GalleryError(str(e)) from None

    def import_checkpoint(self, name: str) -> str:
        """A checkpoint given by path is copied into this gallery's models/ first, so the gallery
        never depends on a file outside it; returns the name to use from then on."""
        from models.checkpoint import (MAX_CHECKPOINT_BYTES, MAX_HEADER_BYTES, SUFFIX,
                                       CheckpointError, validate_bytes)
        from models.fsutil import FileRefused, atomic_write_bytes, read_regular_file

        path = Path(name)
        if not (name.endswith(SUFFIX) and path.is_file()):
            return name
        if path.resolve().parent == self.models_dir.resolve():
            return name
        try:  # read once, validate exactly these bytes, and only then write them
            data = read_regular_file(path, MAX_CHECKPOINT_BYTES + MAX_HEADER_BYTES + 8)
            meta = validate_bytes(data, str(path))
        except FileRefused as e:
            raise GalleryError(f"{path}: {e}") from None
        except CheckpointError as e:
            raise GalleryError(str(e)) from None
        dest = self.models_dir / f"{meta.name}{SUFFIX}"
        if dest.resolve().parent != self.models_dir.resolve():  # valid_name rules this out
            raise GalleryError(f"{path}: model name {meta.name!r} is not a plain name")
        if dest.exists() and dest.read_bytes() != data:
            raise GalleryError(f"this gallery already has a different model called {meta.name!r} "
                               f"({dest}); rename one of them")
        atomic_write_bytes(dest, data)
        return meta.name

    def load_model(self, name: str) -> Embedder:
        name = self.import_checkpoint(name)
        try:
            return registry.load(name, self.model_dirs)
        except (registry.UnknownModelError, ValueError, RuntimeError) as e:
            raise GalleryError(str(e)) from None

    def embedder(self) -> Embedder:
        if self.active_model is None:
            raise GalleryError("this gallery has no model yet: index some photos first")
        return self.load_model(self.active_model)

    def register(self, model: Embedder) -> None:
        self.catalog.register_model(model.info.as_dict(), source=model.info.kind)

    def activate(self, model: Embedder, reason: str, space: str | None = None) -> None:
        """Make `model` the query (and ingest) model, in one transaction. `space`: where it
        serves from now on (a transform's own space); an upgrade without one returns it to the
        space it declares."""
        with self.catalog.transaction():
            self.register(model)
            if reason in ("upgrade", "transform"):
                self.catalog.set_serving_space(model.name, space if space != model.space else None)
            previous = self.active_model
            history = self.catalog.model_history()
            if previous and previous != model.name:
                history.append(previous)
            self.catalog.set_model_history(history)
            self.catalog.set_active_model(model.name)
            self.catalog.log_event(reason, model=model.name, previous=previous,
                                   space=space or self.space_for(model))

    def ensure_model(self, requested: str | None) -> Embedder:
        """The model that ingest uses: the active one; a new gallery takes `requested`."""
        active = self.active_model
        if active is None:
            model = self.load_model(requested or registry.DEFAULT_MODEL)
            self.activate(model, "init")
            return model
        if requested and requested != active:
            wanted = self.resolve_model(requested)
            current = self.catalog.model(active)
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
                self._vector_store = open_store(self.home, self.catalog)
            return self._vector_store

    def choose_store(self, kind: str | None, milvus_uri: str | None = None,
                     move: bool = False) -> dict:
        """Set where this gallery's search vectors live. A new gallery takes any store; one
        that has vectors keeps its store unless `move` (the new store is then filled from the
        catalog). Returns the recorded choice."""
        current = self.catalog.vector_store()
        if kind is None and milvus_uri is None:
            return current or {"kind": "faiss"}
        config = store_config(kind or (current or {}).get("kind", "milvus" if milvus_uri else "faiss"),
                              self.home, milvus_uri)
        if config == (current or {"kind": "faiss"}):
            if current is None:
                self.catalog.set_vector_store(config)
            return config
        has_vectors = self.catalog.has_vectors()
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
            self.catalog.set_vector_store(config)

    def index(self, space: str | None = None) -> SpaceVectors | None:
        """The in-memory index of `space` (default: the active one), refreshed if stale."""
        space = space or self.space
        if space is None:
            return None
        with self.lock:
            current = self._indexes.get(space)
            version = self.catalog.space_version(space)  # the one query of a warm search
            if version == 0:
                return None  # no vectors in this space
            if current is not None and current.version < version:
                current.catch_up(self.catalog)  # another process (or job) wrote vectors
            elif current is None or current.version != version:
                current, how = self.vector_store.open(self.catalog, space, self.index_kind)
                if how.startswith("rebuilt") and "missing" not in how:
                    self.notices.append(f"the {space} {self.vector_store.noun} was "
                                        f"{how[len('rebuilt ('):-1]}: "
                                        f"rebuilt it from the catalog")
                self._indexes[space] = current
            return current

    @property
    def index_kind(self) -> str:
        return self.catalog.index_kind()

    def rebuild_index(self, space: str | None = None, kind: str | None = None) -> str:
        """Rebuild the index of `space` from the catalog (optionally switching its kind)."""
        space = space or self.space
        with self.lock:
            if kind is not None:
                from .index import effective_kind

                effective_kind(kind, 0)  # validates
                self.catalog.set_index_kind(kind)
            self._indexes.pop(space, None)
            idx = self.vector_store.build(self.catalog, space, self.index_kind)
            self.vector_store.save(idx, self.catalog)
            self._indexes[space] = idx
            return idx.kind

    def write_vectors(self, image_ids: list[int], vectors: np.ndarray, model: Embedder) -> None:
        """Store vectors embedded by `model` in the space it serves (caller holds a
        transaction; `sync_index` updates the live index after the commit)."""
        self.catalog.put_vectors(image_ids, vectors, model.name, self.space_for(model))

    def sync_index(self, space: str, image_ids: list[int], vectors: np.ndarray,
                   model: str = "") -> None:
        """After a committed write of these vectors (by `model`): add them to the live index."""
        from .storage.catalog import as_stored

        with self.lock:
            idx = self._indexes.get(space)
            version = self.catalog.space_version(space)
            if idx is None or idx.version + 1 != version:
                self.index(space)  # first vectors of this space, or another writer: catch up
                return
            idx.upsert(np.asarray(image_ids), as_stored(vectors), [model] * len(image_ids),
                       np.full(len(image_ids), version, np.int64))
            idx.version = version

    def save_indexes(self) -> None:
        """Save live indexes, caught up first (a Ctrl-C can land between a batch's commit and its
        index update); a failure (full disk) only costs a rebuild on the next open."""
        from .errors import friendly

        with self.lock:
            for idx in self._indexes.values():
                try:
                    if idx.version < self.catalog.space_version(idx.space):
                        idx.catch_up(self.catalog)
                except Exception:  # best effort: the next open catches up from the catalog
                    continue
                if idx.version == self.catalog.space_version(idx.space):
                    try:
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
        if idx is None:
            raise GalleryError("the gallery is empty: index some photos first")
        scores, ids = idx.search(queries, k)
        rows, by = self.catalog.hit_rows({int(i) for i in ids.ravel() if i >= 0}, space)
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

    def save_query_image(self, data: bytes) -> str:
        """Keep a searched-with image so the query log can be replayed (`compare --log`)."""
        from .store import sha256_bytes

        sha = sha256_bytes(data)
        self.queries_store.put(sha, ".img", data)
        return sha

    def read_query_image(self, sha: str) -> bytes | None:
        try:
            return self.queries_store.read(sha, ".img")
        except OSError:
            pass
        row = self.catalog.image_id(sha)
        if row is not None:
            r = self.catalog.images([row])[row]
            try:
                return self.store.read(r.sha256, r.ext)
            except OSError:
                self.notices.append(f"photo #{r.id} is missing from the store: left out "
                                    "(graceful check --repair)")
        return None

    def image_path(self, row: ImageRow) -> Path:
        return self.store.path(row.sha256, row.ext)

    def image_row(self, ref: str | int) -> ImageRow:
        """A gallery image by id or by (a prefix of) its sha256."""
        ref = str(ref)
        if ref.isdigit():
            rows = self.catalog.images([int(ref)])
            if rows:
                return next(iter(rows.values()))
        if len(ref) >= 6:
            found = self.catalog.image_ids_by_sha_prefix(ref)
            if len(found) == 1:
                return self.catalog.images(found)[found[0]]
        raise GalleryError(f"no gallery image {ref!r} (give an image id or a sha256 prefix)")

    # -- info -----------------------------------------------------------------------------
    def info(self) -> dict:
        space = self.space
        idx = self.index(space) if space else None
        return {
            "home": str(self.home),
            "schema_version": self.catalog.schema_version,
            "images": self.catalog.count_images(),
            "albums": sum(1 for a in self.catalog.albums() if a["album"] is not None),
            "active_model": self.active_model,
            "space": space,
            "index": {"space": space, "vectors": idx.ntotal if idx else 0,
                      "dim": idx.dim if idx else None},
            "index_kind": {"setting": self.index_kind, "built": idx.kind if idx else None},
            "vector_store": self.vector_store.describe(),
            "runtimes": self.catalog.runtimes(),
            "vectors": self.catalog.vector_counts(),
            "models": self.catalog.models(),
            "model_history": self.catalog.model_history(),
            "compatibility": self.compatibility_matrix(),
        }

    def compatibility_matrix(self) -> dict:
        """Query model x gallery space: can its queries search that space's vectors, and what was
        measured when it was trained (checkpoint metrics), if anything."""
        spaces = sorted({r["space"] for r in self.catalog.vector_counts()})
        models = self.catalog.models()
        cells = {}
        for m in models:
            row = {}
            own = self.catalog.serving_space(m["name"])
            for space in spaces:
                if space not in (m["space"], own):
                    row[space] = {"compatible": False}
                    continue
                cell = {"compatible": True, "native": space in (m["name"], own),
                        "transformed": space == own}
                try:
                    entry = self.resolve_model(m["name"])
                    ev = (entry.meta.metrics.get("eval") if entry.meta else None) or {}
                    if ev:
                        cell["measured"] = {"data": ev.get("data"), "old/old": ev.get("old/old"),
                                            "new/old": ev.get("new/old")}
                except GalleryError:
                    cell["missing"] = True
                row[space] = cell
            cells[m["name"]] = row
        return {"spaces": spaces, "models": [m["name"] for m in models], "cells": cells}
