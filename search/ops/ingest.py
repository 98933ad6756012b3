"""Ingest files and folders: hash, skip known, decode, embed in batches, commit, index.

Every batch is one SQLite transaction (image rows + vectors); store files are written before
it, idempotently. A kill at any point leaves a consistent catalog; re-running skips what is
already there and picks up the rest. The FAISS index is a cache, rebuilt if it is behind.
"""
from __future__ import annotations

import threading
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from models.embedder import Embedder
from models.imageio import BadImage, decode, read_photo_file
from models.pipeline import prefetch_map
from models.progress import Progress

from search.core import GalleryCore
from search.ops.raypool import RayOptions, embedded
from search.storage.catalog import ReadOnlyCatalog, album_of_source
from search.storage.files import collect_files
from search.storage.imagestore import sha256_bytes

EXT_BY_FORMAT = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp",
                 "TIFF": ".tif", "MPO": ".jpg", "PPM": ".ppm", "ICO": ".ico"}


@dataclass
class IngestReport:
    model: str
    space: str
    seen: int = 0
    added: int = 0
    duplicates: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    restored: int = 0  # known photos whose file was missing from the store, put back
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def images_per_second(self) -> float:
        return self.added / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {"model": self.model, "space": self.space, "seen": self.seen, "added": self.added,
                "duplicates": self.duplicates, "restored": self.restored,
                "skipped": len(self.skipped),
                "skipped_files": [{"path": p, "reason": r} for p, r in self.skipped],
                "seconds": round(self.seconds, 3),
                "images_per_second": round(self.images_per_second, 2),
                "interrupted": self.interrupted}


@dataclass
class _Item:
    path: Path
    sha256: str = ""
    status: str = "new"  # new | duplicate | skipped
    reason: str = ""
    data: bytes = b""
    tensor: Any = None  # the model's preprocessed image (a torch tensor, or an array)
    width: int = 0
    height: int = 0
    format: str = ""


class _Loader:
    """Runs in the loader thread, with its own read-only SQLite connection."""

    def __init__(self, db_path: Path | str, model: Embedder, space: str, store,
                 decode: bool = True):
        self.db_path = db_path
        self.model = model
        self.space = space
        self.store = store
        self.decode = decode  # off when Ray workers decode
        self.local = threading.local()

    def known(self, sha: str) -> str | None:
        """The stored file extension of an image already embedded in this space, else None."""
        reader = getattr(self.local, "reader", None)
        if reader is None:
            reader = self.local.reader = ReadOnlyCatalog(self.db_path)
        return reader.stored_ext(sha, self.space)

    def __call__(self, path: Path) -> _Item:
        item = _Item(path)
        try:
            item.data = read_photo_file(path)
        except BadImage as e:
            return _Item(path, status="skipped", reason=str(e))
        item.sha256 = sha256_bytes(item.data)
        ext = self.known(item.sha256)
        if ext is not None:
            if not self.store.path(item.sha256, ext).is_file():  # lost from the store: restore it
                return _Item(path, item.sha256, status="duplicate", data=item.data, format=ext)
            return _Item(path, item.sha256, status="duplicate")
        if not self.decode:
            return item
        try:
            decoded = decode(item.data, target_size=self.model.info.image_size)
            item.tensor = self.model.preprocess(decoded.image)
        except BadImage as e:
            return _Item(path, item.sha256, status="skipped", reason=str(e))
        item.width, item.height, item.format = decoded.width, decoded.height, decoded.format
        return item


ProgressFn = Callable[[Progress], None]  # done = files seen so far, failed = files skipped


def ingest(gallery: GalleryCore, paths: Iterable[str | Path], model_name: str | None = None,
           batch_size: int = 16, on_progress: ProgressFn | None = None,
           workers: int = 1, should_stop: Callable[[], bool] | None = None,
           album: str | None = None, album_from_folder: bool = True,
           ray: "RayOptions | None" = None, roots: list[Path] | None = None) -> IngestReport:
    """Add photos. Each new photo's album is `album` when given (photos already in the gallery
    move into it too), else the folder it came from (unless `album_from_folder` is off).
    With `ray`, Ray workers decode and embed; this process still reads, hashes and writes."""
    outside: list[Path] = []
    files = collect_files(paths, roots, outside)  # roots: the app's import roots
    model = gallery.ensure_model(model_name)
    space = gallery.space_for(model)
    report = IngestReport(model.name, space)
    report.skipped += [(str(f), "a link to a file outside the folders this server may read")
                       for f in outside]
    gallery.index(space)  # load or rebuild the live index before adding to it
    loader = _Loader(gallery.catalog.path, model, space, gallery.store, decode=ray is None)
    seen_in_run: set[str] = set()
    regrouped: list[str] = []  # known photos to move into `album`
    t0 = time.perf_counter()
    state = Progress("ingest", model.name, len(files))

    def skip(item: _Item, reason: str) -> None:
        report.skipped.append((str(item.path), reason))
        state.failed += 1
        state.notes.append(f"skipped {item.path}: {reason}")

    def new_photos():
        """Decoded photos not in the gallery yet; counts and reports everything else."""
        for item in prefetch_map(loader, files, workers=workers):
            report.seen += 1
            if item.status == "skipped":
                skip(item, item.reason)
            elif item.status == "duplicate" or item.sha256 in seen_in_run:
                report.duplicates += 1
                if item.status == "duplicate" and item.data:  # its stored file was lost
                    gallery.store.put(item.sha256, item.format, item.data)
                    report.restored += 1
                if album:
                    regrouped.append(item.sha256)
            else:
                seen_in_run.add(item.sha256)
                yield item, (item.tensor if ray is None else item.data)
            if on_progress:
                on_progress(state.tick(report.seen))
            if should_stop and should_stop():
                report.interrupted = True
                return

    def commit(batch: list[_Item], vectors) -> None:
        for it in batch:
            gallery.store.put(it.sha256, _ext(it), it.data)
        with gallery.catalog.transaction():
            # another process may have added some of these since they were read: they are its
            # additions, not ours (inside the write lock, so the count is exact)
            theirs = sum(gallery.catalog.images.image_id(it.sha256) is not None for it in batch)
            ids = [
                gallery.catalog.images.add_image({
                    "sha256": it.sha256, "name": it.path.name, "ext": _ext(it),
                    "bytes": len(it.data), "width": it.width, "height": it.height,
                    "format": it.format, "source": str(it.path.resolve()), "added_at": time.time(),
                    "album": album or (album_of_source(str(it.path.resolve()))
                                       if album_from_folder else None),
                })
                for it in batch
            ]
            gallery.write_vectors(ids, vectors, model)
        gallery.sync_written(ids, vectors, model)
        report.added += len(batch) - theirs
        report.duplicates += theirs

    try:
        with closing(embedded(gallery, model, new_photos(), batch_size, ray)) as batches:
            for done in batches:
                for item, reason in done.failed:  # reported by a Ray worker
                    skip(item, reason)
                for item, info in zip(done.keys, done.infos):  # decoded by a Ray worker
                    item.width, item.height, item.format = info.width, info.height, info.format
                if done.keys:
                    commit(done.keys, done.vectors)
        if regrouped:
            gallery.catalog.images.set_album_by_sha(regrouped, album)
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        if on_progress:
            on_progress(state.tick(report.seen))
        report.seconds = time.perf_counter() - t0
        gallery.save_indexes()
    return report


def _ext(item: _Item) -> str:
    return EXT_BY_FORMAT.get(item.format, item.path.suffix.lower() or ".img")
