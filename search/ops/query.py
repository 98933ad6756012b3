"""Searches: by an image file or bytes, by a gallery image, by text. Optionally logged."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np

from models.embedder import Embedder
from models.imageio import BadImage, decode

from search.core import GalleryCore, SearchResult
from search.errors import GalleryError, friendly
from search.storage.imagestore import sha256_bytes


def embed_image_bytes(model: Embedder, data: bytes) -> np.ndarray:
    try:
        decoded = decode(data, target_size=model.info.image_size)
    except BadImage as e:
        raise GalleryError(f"cannot search with this file: {e}") from None
    return model.embed_images([decoded.image])


def search_bytes(gallery: GalleryCore, data: bytes, k: int = 10, label: str = "",
                 log: bool = False, model_name: str | None = None) -> SearchResult:
    model = gallery.load_model(model_name) if model_name else gallery.embedder()
    t0 = time.perf_counter()
    vector = embed_image_bytes(model, data)
    embed_ms = (time.perf_counter() - t0) * 1000
    result = gallery.search_vectors(vector, k, model.name, gallery.space_for(model))[0]
    result.elapsed_ms += embed_ms
    if log and gallery.catalog.state.log_queries():
        sha = sha256_bytes(data)
        try:
            if gallery.catalog.images.image_id(sha) is None:
                save_query_image(gallery, data)
            log_query(gallery, result, "image", sha, label)
        except (OSError, sqlite3.Error) as e:  # a search must work on a full disk
            gallery.notices.append(f"this search was not logged: {friendly(e)}")
    return result


def search_file(gallery: GalleryCore, path: str | Path, k: int = 10, log: bool = False,
                model_name: str | None = None) -> SearchResult:
    from models.imageio import read_photo_file

    path = Path(path)
    if not path.exists():
        raise GalleryError(f"no such image file: {path}")
    try:  # regular files only, size checked before reading, and before any model loads
        data = read_photo_file(path)
    except BadImage as e:
        raise GalleryError(f"cannot search with {path}: {e}") from None
    return search_bytes(gallery, data, k, str(path), log, model_name)


def search_gallery_image(gallery: GalleryCore, ref: str | int, k: int = 10, log: bool = False,
                         model_name: str | None = None) -> SearchResult:
    """"More like this" for a gallery photo: re-embedded by the query model, itself excluded."""
    row = gallery.image_row(ref)
    try:
        data = gallery.store.read(row.sha256, row.ext)
    except FileNotFoundError:
        raise GalleryError(missing_file_message(gallery, row)) from None
    result = search_bytes(gallery, data, k + 1, f"gallery:{row.id}", log, model_name)
    result.hits = [h for h in result.hits if h.image_id != row.id][:k]
    for rank, hit in enumerate(result.hits, 1):
        hit.rank = rank
    result.k = k
    return result


def missing_file_message(gallery: GalleryCore, row) -> str:
    return (f"photo #{row.id} ({row.name}) is missing from the gallery's store "
            f"({gallery.image_path(row)}): `graceful check --repair` restores it from {row.source} "
            f"if that file is unchanged, or index the original again")


def search_text(gallery: GalleryCore, text: str, k: int = 10, log: bool = False) -> SearchResult:
    model = gallery.embedder()
    if not model.info.has_text:
        raise GalleryError(f"the active model {model.name} has no text tower; search by image instead")
    t0 = time.perf_counter()
    vector = model.embed_text([text])
    result = gallery.search_vectors(vector, k, model.name, gallery.space_for(model))[0]
    result.elapsed_ms += (time.perf_counter() - t0) * 1000
    if log:
        try:
            log_query(gallery, result, "text", "", text)
        except (OSError, sqlite3.Error) as e:
            gallery.notices.append(f"this search was not logged: {friendly(e)}")
    return result


def log_query(gallery: GalleryCore, result: SearchResult, kind: str, query_sha: str, query: str) -> None:
    if not gallery.catalog.state.log_queries():
        return
    gallery.catalog.logs.log_query(result.model, kind, query_sha, query, result.k,
                                   [h.image_id for h in result.hits])


def save_query_image(gallery: GalleryCore, data: bytes) -> str:
    """Keep a searched-with image so the query log can be replayed (`compare --log`)."""
    sha = sha256_bytes(data)
    gallery.queries_store.put(sha, ".img", data)
    return sha


def read_query_image(gallery: GalleryCore, sha: str) -> bytes | None:
    try:
        return gallery.queries_store.read(sha, ".img")
    except OSError:
        pass
    row = gallery.catalog.images.image_id(sha)
    if row is not None:
        r = gallery.catalog.images.images([row])[row]
        try:
            return gallery.store.read(r.sha256, r.ext)
        except OSError:
            gallery.notices.append(f"photo #{r.id} is missing from the store: left out "
                                "(graceful check --repair)")
    return None
