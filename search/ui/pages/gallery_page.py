"""The Gallery page: add photos (uploads, or a folder on the server), browse them by album,
fix albums."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from search.api import import_roots, stage_uploads
from search.ui.errors import guarded, md, opened_gallery
from search.ui.state import gallery, state
from search.ui.widgets import MAX_UPLOAD_BYTES, flash, server_folder, show_flash, show_grid

PAGE_SIZE = 24


def ingest_uploads(files, album: str | None = None) -> None:
    """Uploads are written under names of our own (the client's file name is never a path),
    inside the error handling; the temp folder goes whatever happens (st.rerun included)."""
    tmp = guarded(tempfile.mkdtemp, prefix="graceful-upload-")
    if tmp is None:
        return
    try:
        staged = guarded(stage_uploads, files, Path(tmp), MAX_UPLOAD_BYTES)
        if staged is not None:
            run_ingest([staged.folder], staged.rejected, album=album or None,
                       album_from_folder=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_ingest(paths, rejected=None, album: str | None = None, album_from_folder: bool = True,
               roots: list[Path] | None = None) -> None:
    for p in paths:
        if not Path(p).exists():
            st.error(f"No such file or folder on the server: {md(p)}")
            return
    bar = st.progress(0.0, text="Indexing…")

    def progress(p):
        bar.progress(p.fraction, text=f"Indexing {p.done}/{p.total}")

    report = guarded(gallery().add, paths, progress=progress, album=album,
                     album_from_folder=album_from_folder, roots=roots)
    if report is None:
        return
    skipped = [(Path(p).name, r) for p, r in report.skipped] + list(rejected or [])
    # Show the outcome after a rerun, so the page (count, grid) already includes the new photos
    # and the uploader is emptied.
    ui = state()
    ui.ingest_result = {
        "text": f"Added {report.added} photos · {report.duplicates} already in the gallery · "
                f"{len(skipped)} skipped · {report.images_per_second:.1f} img/s",
        "skipped": skipped}
    ui.upload_round += 1
    st.rerun()


def show_ingest_result() -> None:
    result, state().ingest_result = state().ingest_result, None
    if result:
        st.success(result["text"])
        if result["skipped"]:
            st.warning("Skipped files:")
            st.dataframe(pd.DataFrame(result["skipped"], columns=["file", "reason"]),
                         hide_index=True)


def add_photos(expanded: bool) -> None:
    with st.expander("Add photos", expanded=expanded):
        # No `type=`: Streamlit enforces it by raising on a file name it dislikes (`..`, no
        # extension), which loses the whole upload; the decoder judges each file by its bytes.
        files = st.file_uploader("Drop photos here (JPEG, PNG, WebP, BMP, GIF, TIFF)",
                                 accept_multiple_files=True,
                                 key=f"uploads-{state().upload_round}")
        upload_album = st.text_input("Album for these photos (optional)", key="upload-album",
                                     placeholder="e.g. Holidays 2026")
        if files and st.button(f"Add {len(files)} photos to the gallery", key="add-uploads"):
            ingest_uploads(files, upload_album.strip() or None)
        roots = import_roots()
        folder = st.text_input("…or index a folder on the server (each photo's album: the folder "
                               "it is in)", key="folder", disabled=not roots,
                               placeholder=f"inside {roots[0]}" if roots else
                               "off: the operator sets GRACEFUL_IMPORT_ROOTS")
        if folder and st.button("Index folder", key="index-folder"):
            allowed = server_folder(folder)
            if allowed:
                run_ingest([allowed], roots=roots)


def album_editor(rows, named: list[dict]) -> None:
    """Albums are the labels a fitted upgrade learns from: let the user fix them."""
    g = gallery()
    with st.expander("Edit albums"):
        st.caption("Albums label your photos for fitted upgrades and for comparisons. A photo's "
                   "album is the folder it was indexed from unless you set one here.")
        picked = st.multiselect("Photos on this page", [f"#{r.id} {r.name}" for r in rows],
                                key="album-photos")
        ids = [int(p.split()[0][1:]) for p in picked]
        target = st.text_input("Move them to album", key="album-target")
        c1, c2 = st.columns(2)
        if c1.button("Move to album", key="album-move", disabled=not (picked and target.strip())):
            n = guarded(g.albums.set, ids, target.strip())
            flash(("success", f"{n} photos moved to album {md(target.strip())}."))
        if c2.button("Remove from their album", key="album-clear", disabled=not picked):
            n = guarded(g.albums.set, ids, None)
            flash(("success", f"{n} photos now have no album."))
        if named:
            r1, r2 = st.columns(2)
            old = r1.selectbox("Rename album", [a["album"] for a in named], key="album-rename-old")
            new = r2.text_input("New name", key="album-rename-new")
            if st.button("Rename", key="album-rename", disabled=not new.strip()):
                n = guarded(g.albums.rename, old, new.strip())
                flash(("success", f"Renamed {md(old)} → {md(new.strip())} ({n} photos)."))


def main() -> None:
    g = opened_gallery()
    st.header("Gallery")
    show_flash()
    show_ingest_result()
    n = guarded(g.photos.count) or 0
    if n == 0:
        st.info("**Welcome to Graceful.** Your gallery is empty. Drop photos below, or index a "
                "folder on this server. Photos are embedded with the offline default model "
                "(EfficientNet-Lite0); later you can upgrade the model without re-indexing.")
    add_photos(expanded=n == 0)
    if n == 0:
        return
    named = [a for a in g.albums.list() if a["album"] is not None]
    in_albums = f" in {len(named)} album{'s' if len(named) != 1 else ''}" if named else ""
    st.caption(f"{n} photos{in_albums} · active model **{md(g.active_model)}** "
               f"(space {md(g.space)})")
    labels = {"All photos": None, **{f"{a['album']} ({a['images']})": a["album"] for a in named}}
    album = labels[st.selectbox("Album", list(labels), key="gallery-album")]
    shown = n if album is None else next(a["images"] for a in named if a["album"] == album)
    pages = max(1, -(-shown // PAGE_SIZE))
    page = st.number_input("Page", 1, pages, 1, key="gallery-page") if pages > 1 else 1
    rows = g.photos.list((page - 1) * PAGE_SIZE, PAGE_SIZE, album)
    by = g.photos.embedded_by([r.id for r in rows])
    album_editor(rows, named)
    show_grid([{"image_id": r.id, "sha256": r.sha256, "name": r.name, "path": str(g.photos.path(r)),
                "embedded_by": by.get(r.id, "—"), "album": r.album} for r in rows], key="gallery")


main()
