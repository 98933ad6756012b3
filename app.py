"""Graceful: the Streamlit app. `streamlit run app.py`

Thin views over the same engine as the CLI (`search/`, `models/`). One engine per process
(`st.cache_resource`), guarded by its lock; background jobs get their own connection.
"""
from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from search.api import BACKFILL_ORDERS, Gallery, GalleryError, default_home, fit_name, stage_uploads
from search.cli import render
from search.cli.render import duration_text
from search.errors import HANDLED, friendly
from search.jobs import Job, JobRunner, backfill_job, fit_job, reembed_job, transform_job
from search.runtime import configure_threads

MAX_UPLOAD_BYTES = 50 * 1024 * 1024
PAGE_SIZE = 24
PAGES = ["Gallery", "Search", "Models", "Compare"]

st.set_page_config(page_title="Graceful", page_icon="🔎", layout="wide")


_MD_SPECIAL = set("\\`*_[]<>#|~:$!")


def md(text) -> str:
    """User-provided text (album, model, file names, reasons) made inert for st.markdown and
    friends: the characters of markdown links and images, emphasis, code, HTML, directives
    (:red[...]) and LaTeX are backslash-escaped, so `![x](http://host/a.png)` shows as text and
    makes the browser fetch nothing."""
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in str(text))


# -- shared engine ----------------------------------------------------------------------------
@st.cache_resource
def engine(home: str) -> Gallery:
    configure_threads()
    return Gallery.open(home, create=True)


@st.cache_resource
def job_runner() -> JobRunner:
    return JobRunner()


def preview(data: bytes, size: int = 256) -> bytes | None:
    """A square JPEG of an untrusted image, through the engine's bounded decoder (pixel and
    aspect limits from the header, reduced-size JPEG decode); None if it is not a usable image."""
    from PIL import ImageOps

    from models.imageio import BadImage, decode

    try:
        im = ImageOps.fit(decode(data, target_size=size).image, (size, size))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
        return buf.getvalue()
    except (BadImage, OSError, ValueError):
        return None


@st.cache_data(max_entries=4096, show_spinner=False)
def thumbnail(path: str, size: int = 256) -> bytes | None:
    from models.imageio import BadImage, read_photo_file

    try:
        return preview(read_photo_file(path), size)
    except BadImage:
        return None


def import_roots() -> list[Path]:
    from search.api import import_roots as roots

    return roots()


def server_folder(text: str) -> Path | None:
    """The folder a user typed, if it lies inside an import root; else an error and None."""
    roots = import_roots()
    folder = Path(text.strip()).expanduser().resolve()
    if not roots:
        st.error("Reading folders on the server is off. The operator can allow folders with "
                 "GRACEFUL_IMPORT_ROOTS=/path/to/photos (several separated by ':').")
        return None
    if not any(folder == r or r in folder.parents for r in roots):
        st.error(f"{md(folder)} is outside the folders this server may read "
                 f"({md(', '.join(map(str, roots)))}).")
        return None
    if not folder.is_dir():
        st.error(f"No such folder on the server: {md(folder)}")
        return None
    from search.api import links_outside

    escaping = links_outside(folder, roots)
    if escaping:
        st.error(md(f"{escaping[0]} links to {escaping[0].resolve()}, outside the folders this "
                    f"server may read: refused ({len(escaping)} such link"
                    f"{'s' if len(escaping) > 1 else ''} in {folder})."))
        return None
    return folder


def home() -> str:
    return str(default_home())


def gallery() -> Gallery:
    return engine(home())


def guarded(fn, *args, **kwargs):
    """Run engine calls under the lock; show errors as messages, never as tracebacks."""
    g = gallery()
    try:
        with g.lock:
            return fn(*args, **kwargs)
    except GalleryError as e:
        st.error(str(e))
    except HANDLED as e:  # full disk, permissions, a busy or damaged catalog
        st.error(md(friendly(e)[0].upper() + friendly(e)[1:]))
    except Exception as e:  # noqa: BLE001 - a user must never see a stack trace
        st.error(f"Something went wrong: {md(e)}")
    finally:
        while g.notices:
            st.caption(f"Note: {md(g.notices.pop(0))}")
    return None


# -- small views ------------------------------------------------------------------------------
def show_grid(hits, columns: int = 6, highlight: dict[int, str] | None = None, key: str = "grid",
              similar_buttons: bool = True) -> None:
    cols = st.columns(columns)
    for n, hit in enumerate(hits):
        with cols[n % columns]:
            data = thumbnail(hit["path"])
            if data:
                st.image(data, width="stretch")
            color = (highlight or {}).get(hit["image_id"])
            caption = f"\\#{hit['image_id']} {md(hit['name'][:24])}"
            if "score" in hit:
                caption += f" · {hit['score']:.3f}"
            if hit.get("embedded_by"):
                caption += f" · {md(hit['embedded_by'])}"
            if hit.get("album"):
                caption += f" · 📁 {md(hit['album'])}"
            st.markdown(f":{color}[{caption}]" if color else caption)
            if similar_buttons and st.button("Similar", key=f"{key}-sim-{hit['image_id']}-{n}"):
                st.session_state.similar_to = hit["image_id"]
                st.session_state.page = "Search"
                st.rerun()


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
    st.session_state.ingest_result = {
        "text": f"Added {report.added} photos · {report.duplicates} already in the gallery · "
                f"{len(skipped)} skipped · {report.images_per_second:.1f} img/s",
        "skipped": skipped}
    st.session_state.upload_round = st.session_state.get("upload_round", 0) + 1
    st.rerun()


def show_ingest_result() -> None:
    result = st.session_state.pop("ingest_result", None)
    if result:
        st.success(result["text"])
        if result["skipped"]:
            st.warning("Skipped files:")
            st.dataframe(pd.DataFrame(result["skipped"], columns=["file", "reason"]), hide_index=True)


# -- pages ------------------------------------------------------------------------------------
def page_gallery() -> None:
    g = gallery()
    st.header("Gallery")
    show_flash()
    show_ingest_result()
    n = g.count_images()
    if n == 0:
        st.info("**Welcome to Graceful.** Your gallery is empty. Drop photos below, or index a "
                "folder on this server. Photos are embedded with the offline default model "
                "(EfficientNet-Lite0); later you can upgrade the model without re-indexing.")
    with st.expander("Add photos", expanded=n == 0):
        # No `type=`: Streamlit enforces it by raising on a file name it dislikes (`..`, no
        # extension), which loses the whole upload; the decoder judges each file by its bytes.
        files = st.file_uploader("Drop photos here (JPEG, PNG, WebP, BMP, GIF, TIFF)",
                                 accept_multiple_files=True,
                                 key=f"uploads-{st.session_state.get('upload_round', 0)}")
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
    n = g.count_images()
    if n == 0:
        return
    albums = g.albums()
    named = [a for a in albums if a["album"] is not None]
    in_albums = f" in {len(named)} album{'s' if len(named) != 1 else ''}" if named else ""
    st.caption(f"{n} photos{in_albums} · active model **{md(g.active_model)}** (space {md(g.space)})")
    labels = {"All photos": None, **{f"{a['album']} ({a['images']})": a["album"] for a in named}}
    choice = st.selectbox("Album", list(labels), key="gallery-album")
    album = labels[choice]
    shown = n if album is None else next(a["images"] for a in named if a["album"] == album)
    pages = max(1, -(-shown // PAGE_SIZE))
    page = st.number_input("Page", 1, pages, 1, key="gallery-page") if pages > 1 else 1
    rows = g.list_images((page - 1) * PAGE_SIZE, PAGE_SIZE, album)
    by = g.embedded_by([r.id for r in rows])
    album_editor(g, rows, named)
    show_grid([{"image_id": r.id, "name": r.name, "path": str(g.image_path(r)),
                "embedded_by": by.get(r.id, "—"), "album": r.album} for r in rows], key="gallery")


def album_editor(g: Gallery, rows, named: list[dict]) -> None:
    """Albums are the labels a fitted upgrade learns from: let the user fix them."""
    with st.expander("Edit albums"):
        st.caption("Albums label your photos for fitted upgrades and for comparisons. A photo's "
                   "album is the folder it was indexed from unless you set one here.")
        picked = st.multiselect("Photos on this page", [f"#{r.id} {r.name}" for r in rows],
                                key="album-photos")
        target = st.text_input("Move them to album", key="album-target")
        c1, c2 = st.columns(2)
        if c1.button("Move to album", key="album-move", disabled=not (picked and target.strip())):
            ids = [int(p.split()[0][1:]) for p in picked]
            n = guarded(g.set_album, ids, target.strip())
            flash(("success", f"{n} photos moved to album {md(target.strip())}."))
        if c2.button("Remove from their album", key="album-clear", disabled=not picked):
            n = guarded(g.set_album, [int(p.split()[0][1:]) for p in picked], None)
            flash(("success", f"{n} photos now have no album."))
        if named:
            r1, r2 = st.columns(2)
            old = r1.selectbox("Rename album", [a["album"] for a in named], key="album-rename-old")
            new = r2.text_input("New name", key="album-rename-new")
            if st.button("Rename", key="album-rename", disabled=not new.strip()):
                n = guarded(g.rename_album, old, new.strip())
                flash(("success", f"Renamed {md(old)} → {md(new.strip())} ({n} photos)."))


def page_search() -> None:
    g = gallery()
    st.header("Search")
    if g.count_images() == 0:
        st.info("The gallery is empty: add photos on the Gallery page first.")
        return
    model = guarded(g.embedder)
    if model is None:
        return
    st.caption(f"Queries use **{md(model.name)}** (space {md(model.space)})")
    k = st.slider("Results", 4, 48, 12, step=4, key="k")
    result = None
    up = st.file_uploader("Search by photo", key="query-upload")  # no `type=`: see page_gallery
    if up is not None:
        data = up.getvalue()
        if len(data) > MAX_UPLOAD_BYTES:
            st.error("That file is too large.")
        else:
            shown = preview(data, 160)
            if shown:
                st.image(shown, width=160, caption="query")
            result = guarded(g.search, data, k, name=up.name, log=True)
    if model.info.has_text:
        text = st.text_input("…or describe what you are looking for", key="query-text")
        if text:
            result = guarded(g.search, None, k, text=text, log=True)
    similar = st.session_state.get("similar_to")
    if result is None and similar:
        row = guarded(g.image_row, similar)
        if row:
            shown = thumbnail(str(g.image_path(row)))
            if shown:
                st.image(shown, width=160, caption=f"similar to #{row.id}")
            result = guarded(g.search, None, k, image=similar, log=True)
    if result is not None:
        st.subheader(f"{len(result.hits)} results · {md(result.model)} · {result.elapsed_ms:.0f} ms")
        show_grid([h.as_dict() for h in result.hits], key="results")


def page_models() -> None:
    g = gallery()
    st.header("Models")
    show_flash()
    entries = g.available_models()
    active, space = g.active_model, g.space
    where = g.vector_store.describe()
    served = ("FAISS index files" if where["kind"] == "faiss"
              else f"Milvus at `{where['uri']}` ({where['mode']})")
    mode = g.serving()
    how = (" + ".join(f"{md(m)} {w:.2f}" for m, w in zip(mode["models"], mode["weights"]))
           if mode["mode"] == "fused" else "")
    st.markdown(f"Active model: **{md(active or '—')}** · gallery space **{md(space or '—')}** · "
                f"serving mode **{mode['mode']}**" + (f" ({how})" if how else "")
                + f" · searches served by {served}")
    table = pd.DataFrame([{
        "model": e.name, "kind": e.kind, "space": e.space, "dim": e.dim,
        "compatible with": ", ".join(e.compatible_with),
        "can query this gallery": can_query(g, e, active, space),
    } for e in entries])
    st.dataframe(table, hide_index=True, width="stretch")
    bad = g.unreadable_models()
    if bad:
        st.warning("Unreadable model files (left out): " + "; ".join(
            md(f"{path.name}: {reason}") for path, reason in bad))
    if active is None:
        st.info("Index photos first; then upgrades appear here.")
        return

    st.subheader("Upgrade")
    choices = [e.name for e in entries if e.name != active]
    target = st.selectbox("New model", choices, key="upgrade-target",
                          index=choices.index("lite2-compat-lite0") if "lite2-compat-lite0" in choices else 0)
    c1, c2, c3 = st.columns(3)
    if c1.button("Check compatibility", key="dry-run"):
        r = try_upgrade(g, target, dry_run=True)
        if r:
            show_preflight(r.preflight)
    if c2.button("Upgrade", type="primary", key="upgrade"):
        r = try_upgrade(g, target)
        if r:
            flash(("info", preflight_text(r.preflight)),
                  ("success", f"Upgraded {md(r.previous)} → {md(r.model)} in {r.switch_ms:.1f} ms; "
                              f"0 vectors recomputed."))
    refused = st.session_state.get("refused")
    if refused and refused["model"] == target:
        show_refusal(g, refused)
    target_entry = next((e for e in entries if e.name == target), None)
    transform_section(g, target_entry)
    job_progress("transform")  # started here or from the plan below
    if target_entry is not None and target_entry.space not in (None, space):
        st.caption(f"{md(target)} lives in space {md(target_entry.space)}: it cannot search this gallery's "
                   "vectors. Re-embed every photo into a second index alongside; search keeps "
                   "using the current one until it is complete, then switches.")
        if st.button(f"Re-embed the gallery with {target}", key="reembed-start"):
            job_runner().start("reembed", reembed_job(g.home, target))
        job_progress("reembed")
    history = g.model_history()
    if c3.button(f"Roll back to {history[-1]}" if history else "Roll back", disabled=not history,
                 key="rollback"):
        r = guarded(g.rollback)
        if r:
            msgs = [("success", f"Rolled back {md(r.previous)} → {md(r.model)} in {r.switch_ms:.1f} ms; "
                                f"{r.kept_vectors} vectors of {md(r.previous)} stay searchable.")]
            if r.need_reembed:
                msgs.append(("warning", f"{r.need_reembed} photos have no {r.model} vector: "
                                        "run the backfill."))
            flash(*msgs)

    fit_section(g, entries, active)

    st.subheader("Backfill (optional)")
    status = guarded(g.backfill_status) or {}
    st.caption(f"{status.get('fraction_backfilled', 0):.0%} of the gallery is embedded by "
               f"{status.get('model')} · {status.get('older_vectors', 0)} older vectors · "
               f"{status.get('missing', 0)} missing")
    runner = job_runner()
    order = st.selectbox("Order", BACKFILL_ORDERS, key="backfill-order")
    b1, b2 = st.columns(2)
    if b1.button("Start / resume backfill", key="backfill-start"):
        runner.start("backfill", backfill_job(g.home, order))
    if b2.button("Pause", key="backfill-pause"):
        job = runner.get("backfill")
        if job:
            job.stop()
    job_progress("backfill")

    st.subheader("Compatibility matrix")
    matrix = g.compatibility_matrix()
    if matrix["models"]:
        st.dataframe(pd.DataFrame({sp: {name: render.compat_cell(matrix["cells"][name][sp]) for name in matrix["models"]}
                                   for sp in matrix["spaces"]}), width="stretch")
        st.caption("Rows: query models this gallery has used; columns: spaces its vectors live in.")
    generations_section(g)
    check_section(g)

    with st.expander("Train a compatible model"):
        st.caption("A new frozen backbone plus a small head trained so its vectors live in this "
                   "gallery's space: `adapter` learns from the gallery's own photos (no labels); "
                   "`bct` / `pct` need a labelled folder (one sub-folder per class). `lqf` uses "
                   "LQF-style least-squares heads (docs/BENCHMARKS.md).")
        t1, t2, t3 = st.columns(3)
        method = t1.selectbox("Method", ["adapter", "bct", "pct"], key="train-method")
        backbone = t2.selectbox("Backbone", [e.name for e in entries if e.kind != "compatible"
                                             and e.name != active], key="train-backbone")
        loss = t3.selectbox("Loss", ["ce", "lqf"], key="train-loss")
        folder = "" if method == "adapter" else st.text_input(
            "Labelled folder on the server", key="train-folder", placeholder="/path/to/ImageFolder")
        name = st.text_input("Name", f"{backbone}-{method}-{active}", key="train-name")
        if st.button("Train", key="train-start", disabled=method != "adapter" and not folder):
            data = g.store.root if method == "adapter" else server_folder(folder)
            if data:
                job_runner().start("train", train_job(g, method, backbone, loss, data, name))
        job_progress("train")


def can_query(g: Gallery, e, active: str | None, space: str | None) -> str:
    """The Models table's verdict: measured (the fit's, or a check made on this page), never
    just "the spaces match" (a model trained elsewhere can share the space and still make search
    worse)."""
    if e.name == active:
        return "active"
    if space not in (e.space, g.serving_space(e.name)):
        return "needs re-embed"
    known = g.standing_verdict(e) or st.session_state.get("verdicts", {}).get((e.name, space))
    return known or "same space · not measured yet (Check compatibility)"


def remember_verdict(g: Gallery, name: str, p) -> None:
    text = (f"{'yes' if p.passed else 'no'}: {p.verdict}" + (" (loses results)" if p.flags else "")
            + f" on {p.sample} photos")
    st.session_state.setdefault("verdicts", {})[(name, g.space)] = text


def try_upgrade(g: Gallery, target: str, dry_run: bool = False, mode: str | None = None):
    """Upgrade (or check); a pre-flight refusal is kept to show what was measured and the
    gallery-fitted next step."""
    from search.api import PreflightRefused

    st.session_state.pop("refused", None)
    try:
        with g.lock:
            space = g.space
            result = g.upgrade(target, dry_run=dry_run, mode=mode)
        if dry_run:
            remember_verdict(g, target, result.preflight)
        return result
    except PreflightRefused as e:
        st.session_state.refused = e.result.as_dict()
        p = e.result.preflight
        st.session_state.setdefault("verdicts", {})[(target, space)] = (
            f"no: {p.verdict} on {p.sample} photos")
    except GalleryError as e:
        st.error(md(str(e)))
    return None


def transform_section(g: Gallery, entry) -> None:
    """Move the gallery too: the target's gallery transform maps every stored vector into its
    own space (a background job: pause = stop, start again = continue)."""
    spec = (entry.meta.transform if entry is not None and entry.meta is not None else None) or {}
    if not spec or spec.get("input_space") not in (None, g.space):
        return
    kind = "its head applied to the stored vectors (exact)" if spec["kind"] == "head" else \
        "a map learned from the fit's photo pairs (approximate; backfill refines it)"
    st.caption(f"{md(entry.name)} can also move this gallery into its own space by arithmetic: "
               f"{kind}. No photo is decoded; the current vectors stay, so rollback is instant.")
    t1, t2 = st.columns(2)
    if t1.button(f"Upgrade and transform the gallery to {entry.name}", key="transform-start"):
        job_runner().start("transform", transform_job(g.home, entry.name))
    if t2.button("Pause transform", key="transform-pause"):
        job = job_runner().get("transform")
        if job:
            job.stop()


def show_refusal(g: Gallery, refused: dict) -> None:
    p, step = refused["preflight"], refused.get("next_step") or {}
    st.warning(f"Pre-flight refused {md(refused['model'])} for this gallery. {p['expectation']}")
    for reason in p["reasons"]:
        st.caption(f"• {reason}")
    if step:
        st.info(f"Next step: fit an upgrade to this gallery's own photos with {step['backbone']}: "
                f"about {duration_text(step['fit_seconds'])}, against {duration_text(step['backfill_seconds'])} "
                f"for re-embedding all {step['photos']} photos.")
        if st.button("Train an upgrade for this gallery", key="fit-from-refusal"):
            name = fit_name(step["backbone"], g.active_model)
            job_runner().start("fit", fit_job(g.home, step["backbone"], unique_name(g, name)))
            st.session_state.pop("refused", None)
            st.rerun()


def unique_name(g: Gallery, name: str) -> str:
    taken = {e.name for e in g.available_models()}
    n, candidate = 1, name
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def fit_section(g: Gallery, entries, active: str) -> None:
    st.subheader("Fit an upgrade to this gallery")
    st.caption("Trains a new backbone's head on this gallery's own photos and albums, against the "
               "vectors it already stores (none is recomputed), and measures it on held-out photos "
               "before offering it. With albums it learns from them (PCT); without, it builds a "
               "label-free bridge to the new model (maps between the two spaces, and both "
               "generations searched together), each path measured against the whole gallery.")
    # the gallery's own model is a choice too: a head learned from the stored vectors alone
    bases = [e.name for e in entries if e.kind != "compatible" and (e.name != active or e.name == g.space)]
    f1, f2, f3 = st.columns(3)
    backbone = f1.selectbox("New backbone", bases, key="fit-backbone",
                            index=bases.index("lite2") if "lite2" in bases else 0,
                            help="The model that computed the stored vectors (e.g. lite0 on a lite0 "
                                 "gallery) learns from them alone: nothing is decoded, seconds.")
    method = f2.selectbox("Method", ["auto", "bridge", "pct", "bct", "adapter", "procrustes"],
                          key="fit-method", help="auto: pct with albums, else a label-free "
                          "bridge (query map, gallery map, both generations fused)")
    name = f3.text_input("Name", unique_name(g, fit_name(backbone, active)), key=f"fit-name-{backbone}")
    est = g.fit_estimate(backbone)
    if backbone == g.space:
        st.caption(f"{backbone} computed this gallery's vectors: the head learns from them and the "
                   f"albums alone, no photo is decoded (seconds).")
    else:
        st.caption(f"Runs {backbone} on {est['sample']} of {est['photos']} photos: about "
                   f"{duration_text(est['fit_seconds'])} (a full re-embed: "
                   f"{duration_text(est['backfill_seconds'])}).")
    b1, b2 = st.columns(2)
    if b1.button("Train an upgrade for this gallery", key="fit-start", type="primary"):
        job_runner().start("fit", fit_job(g.home, backbone, name.strip(), method))
    if b2.button("Pause training", key="fit-pause"):
        job = job_runner().get("fit")
        if job:
            job.stop()
    job_progress("fit")
    report = g.latest_fit_report()
    if report:
        show_fit_report(report, g)


def show_plan(g: Gallery, r: dict) -> None:
    """The upgrade plan: every path measured on the same held-out photos, quality against
    compute (one point per path), next to the buttons that take each path."""
    m = r["measured"]
    o = m["old"]
    rows = [{"path": "now (no change)" if p["path"] == "now" else p["path"] + (" ★" if p["recommended"] else ""),
             "top-1": p["top1"], "top-5": p["top5"], "mAP": p["map"], "NFR": p["nfr"] or 0.0,
             "lost@5": p["lost_at_5"] or 0.0, "kept": 1.0 if p["retention"] is None else p["retention"],
             "photos embedded": p["photos_embedded"] or 0, "time": p["time"] or "—",
             "flags": "; ".join(p["flags"])} for p in render.plan_table(r)]
    st.markdown(f"**Upgrade plan** · measured on {m['queries']} held-out photos (near duplicates "
                f"left out: {m['near_duplicates']['rule']}) · ★ recommended")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                 column_config={k: st.column_config.NumberColumn(format="%.3f")
                                for k in ("top-1", "top-5", "mAP", "NFR", "lost@5", "kept")})
    import altair as alt

    points = pd.DataFrame([{"seconds": max(p["seconds"], 0.1), "mAP": p["map"], "path": p["path"],
                            "lost@5": p["lost_at_5"]} for p in r["plan"]]
                          + [{"seconds": 0.1, "mAP": o["map"], "path": "now", "lost@5": 0.0}])
    base = alt.Chart(points).encode(
        x=alt.X("seconds", scale=alt.Scale(type="log"), title="time at this gallery's size (s, log)"),
        y=alt.Y("mAP", scale=alt.Scale(zero=False), title="mAP on held-out photos"),
        tooltip=["path", "mAP", "seconds", "lost@5"])
    st.altair_chart(base.mark_circle(size=140).encode(color="path")
                    + base.mark_text(dx=12, align="left").encode(text="path"),
                    use_container_width=True)
    st.caption(md(r["recommendation"]) + " · the buttons below take each path; progress shows "
               "under Upgrade above")
    if not r.get("path") or r["name"] == g.active_model:
        return
    verdicts = {p["path"]: p for p in r["plan"]}

    def worse(path: str) -> bool:
        return verdicts.get(path, {}).get("verdict") == "worse"

    b1, b0, b2, b3 = st.columns(4)
    if "blend" in verdicts and b0.button(
            "Queries with the old model", key="plan-blend", disabled=worse("blend"),
            help="the head's query and the old model's searched together (no vector moves)"):
        res = try_upgrade(g, r["name"], mode="fused")
        if res:
            flash(("success", f"Upgraded {res.previous} → {res.model} ({res.mode} mode)."))
    if b1.button(f"Queries only: upgrade to {r['name']}", key="plan-queries",
                 disabled=worse("queries"), help="measured worse" if worse("queries") else None):
        res = try_upgrade(g, r["name"])
        if res:
            flash(("success", f"Upgraded {res.previous} → {res.model} in {res.switch_ms:.1f} ms; "
                              "0 vectors recomputed."))
    if b2.button("Transform the gallery", key="plan-transform", disabled=worse("transform"),
                 help="measured worse" if worse("transform") else None):
        job_runner().start("transform", transform_job(g.home, r["name"]))
        st.rerun()  # its progress shows under Upgrade, above
    if b3.button("Transform, then backfill", key="plan-backfill",
                 disabled=worse("transform") or worse("backfill")):
        job_runner().start("transform", transform_job(g.home, r["name"], then_backfill=True))
        st.rerun()


def show_bridge_report(r: dict, g: Gallery | None = None) -> None:
    """A label-free bridge's plan: every path against the whole gallery, a button per path."""
    st.info(f"**{md(r['name'])}** (bridge {md(r['old_model'])} ↔ {md(r['backbone'])}, "
            f"{r['photos_embedded']} of {r['gallery_photos']} photos embedded): "
            f"{md(r['recommendation'])}")
    rows = []
    for p in r["plan"]:
        row = {"path": p["path"] + (f" @{p['weight']:.2f}" if p["path"] == "fused" else "")
               + (" ★" if p["path"] == r["recommended"] else ""),
               "fidelity": f"{p['fidelity']:.3f} ±{p['fidelity_se']:.3f}",
               "kept old": f"{p['kept_old']:.3f} ±{p['kept_old_se']:.3f}"}
        if r["labelled"]:
            row.update({k: f"{p[v]:.3f}" for k, v in (("top-1", "top1"), ("mAP", "map"),
                                                         ("NFR", "nfr"), ("lost@5", "lost_at_5"))})
        row.update({"photos embedded": p["photos_embedded"], "time": duration_text(p["seconds"]),
                    "flags": "; ".join(p["flags"])})
        rows.append(row)
    m = r["measured"]
    if r.get("albums_unusable"):
        st.caption(f"Albums: {r['albums_unusable']}")
    st.markdown(f"**Upgrade plan** · {m['queries']} held-out photos searching {m['reference']} "
                f"photos of the gallery · fidelity: share of a full re-embed's first 10 results · "
                f"kept old: share of the old search's first 10 · ★ recommended")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    if g is None or not r.get("path"):
        return
    b1, b2, b3, b4 = st.columns(4)
    if b1.button("Query map", key="bridge-queries", help="lite2's queries mapped into the "
                 "stored space; nothing moves"):
        res = try_upgrade(g, r["name"])
        if res:
            flash(("success", f"Upgraded {res.previous} → {res.model} ({res.mode} mode)."))
    if b2.button("Gallery map", key="bridge-native", help="the stored vectors mapped into the "
                 "new model's space; it then serves natively"):
        job_runner().start("transform", transform_job(g.home, r["name"], mode="native"))
        st.rerun()
    if b3.button(f"Fused @{r['weight']:.2f}", key="bridge-fused", type="primary",
                 help="old and new generations searched together"):
        job_runner().start("transform", transform_job(g.home, r["name"], mode="fused",
                                                      weight=r["weight"]))
        st.rerun()
    if b4.button(f"Re-embed with {r['backbone']}", key="bridge-reembed"):
        job_runner().start("reembed", reembed_job(g.home, r["backbone"]))
        st.rerun()


def show_fit_report(r: dict, g: Gallery | None = None) -> None:
    if r.get("method") == "bridge":
        return show_bridge_report(r, g)
    h, s = r["held_out"], r["sample"]
    (st.success if r["passed"] else st.error)(
        f"**{md(r['name'])}** ({r['method']} on {r['backbone']}): {r['verdict']}. "
        f"{md(r['expectation'])}")
    if r.get("plan") and g is not None:
        show_plan(g, r)
    rows = [{"held-out photos": row["label"], "top-1": f"{row['top1']:.3f}",
             "mAP": f"{row['map']:.3f}", "NFR": "—" if row["nfr"] is None else f"{row['nfr']:.3f}"}
            for row in render.fit_pairs(r)]
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True)
    st.caption(f"Trained on {s['train']} photos" + (f" of {s['albums']} albums" if s["labelled"] else "")
               + f", measured on {s['held_out']} held-out photos of {r['gallery_photos']} · own "
                 f"stored vector ranks in the top {h['own_rank']:.2%} · neighbourhood agreement "
                 f"{h['agreement']:.2f} · {r['seconds']['total']:.0f} s · "
               + ("saved" if r.get("path") else "not saved"))


def check_section(g: Gallery) -> None:
    """`graceful check [--repair]` on the page: is the gallery whole?"""
    with st.expander("Check the gallery"):
        st.caption("Catalog integrity, every stored photo against its hash, index files against "
                   "their checksums and the catalog, models still loadable. Repair rebuilds index "
                   "files and re-imports missing photos from where they were indexed.")
        c1, c2 = st.columns(2)
        report = None
        if c1.button("Check", key="check-run"):
            report = guarded(g.check)
        if c2.button("Check and repair", key="check-repair"):
            report = guarded(g.check, True)
        if report is not None:
            (st.success if report.ok else st.error)(
                "The gallery is whole." if report.ok else
                f"{report.as_dict()['problems']} problems found (see below).")
            st.dataframe(pd.DataFrame(report.as_dict()["findings"]), hide_index=True, width="stretch")


def generations_section(g: Gallery) -> None:
    """Many generations (v1 -> v2 -> v3) and many devices (small query, large gallery models)."""
    with st.expander("Generations and devices (benchmarks on a labelled train/test pair)"):
        st.caption("`chain`: lite0 -> lite1 -> lite2 with growing classes: compatibility matrix and "
                   "the compatibility tax. `hetero`: lite0/lite1 query models compatible with a "
                   "lite2 gallery model: accuracy vs images/s. Both also run from the CLI "
                   "(`graceful bench chain|hetero`).")
        c1, c2 = st.columns(2)
        train = c1.text_input("Train folder (ImageFolder)", key="gen-train")
        test = c2.text_input("Test folder (same classes)", key="gen-test")
        k1, k2 = st.columns(2)
        kind = k1.selectbox("Benchmark", ["chain", "hetero"], key="gen-kind")
        loss = k2.selectbox("Head loss", ["ce", "lqf"], key="gen-loss")
        if st.button("Run benchmark", key="gen-start", disabled=not (train and test)):
            train, test = server_folder(train), server_folder(test)
            if train and test:
                out = g.reports_dir / f"bench-{kind}-{loss}.json"
                job_runner().start(f"bench-{kind}", generations_job(
                    kind, Path(train), Path(test), g.cache_dir, loss, out))
        job_progress(f"bench-{kind}")
        for path in sorted(g.reports_dir.glob("bench-*.json")):
            result = json.loads(path.read_text())
            st.markdown(f"**{md(path.stem)}**")
            if "matrix" in result:
                st.dataframe(pd.DataFrame({gal: {q: f"{row[gal]['top1']:.3f} ({row[gal]['map']:.3f})"
                                                 for q, row in result["matrix"].items()}
                                           for gal in ("v1", "v2", "v3")}), width="stretch")
                st.caption("top-1 (mAP), query model x gallery model · compatibility tax: " + ", ".join(
                    f"{gen} top-1 {t['top1']:+.4f}" for gen, t in result["compatibility_tax"].items()))
            else:
                st.dataframe(pd.DataFrame(result["rows"])[["query_model", "top1", "map", "images_per_s"]],
                             hide_index=True, width="stretch")


def generations_job(kind: str, train_dir: Path, test_dir: Path, cache_dir: Path, loss: str,
                    out_path: Path):
    """Run `graceful bench chain|hetero` in the background and save its JSON for the app."""
    def work(job: Job):
        import json

        from models.evaluation.generations import GenConfig, chain, hetero

        cfg = GenConfig(Path(train_dir), Path(test_dir), cache_dir, loss=loss, progress=False)
        result = (chain if kind == "chain" else hetero)(cfg)
        result["loss"] = loss
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1))
        job.done = job.total = 1
        job.message = f"saved {out_path.name}"
        return result
    return work


def train_job(g: Gallery, method: str, backbone: str, loss: str, data: Path, name: str):
    from models.compat_train import TrainRequest, train_compatible
    from models.train import TrainConfig

    req = TrainRequest(g.active_model, backbone, method, data, name, g.models_dir, g.cache_dir,
                       config=TrainConfig(method, loss=loss), progress=False)

    def work(job):
        path, meta = train_compatible(req)
        job.done = job.total = 1
        job.message = f"trained {meta.name} (space {meta.space}): upgrade to it above"
        return str(path)
    return work


@st.fragment(run_every=1.0)
def job_progress(name: str) -> None:
    job = job_runner().get(name)
    if job is None:
        return
    eta = f" · ETA {job.eta_seconds:.0f} s" if job.eta_seconds else ""
    if job.total:
        speed = f" · {job.rate:.1f} img/s{eta}" if job.running and job.rate else ""
        st.progress(job.fraction, text=f"{name.capitalize()} {job.status}: {job.done}/{job.total}{speed}")
    else:
        st.caption(f"{name.capitalize()} {job.status}…")
    if job.status == "failed":
        st.error(job.message)
    elif job.message:
        st.caption(job.message)


def show_flash() -> None:
    for kind, text in st.session_state.pop("flash", []):
        getattr(st, kind)(text)


def flash(*messages: tuple[str, str]) -> None:
    """Show messages after a rerun, so the page above them already reflects the change."""
    st.session_state.flash = list(messages)
    st.rerun()


def preflight_text(p) -> str:
    text = render.preflight_summary(p)
    return text[0].upper() + text[1:]


def show_preflight(p) -> None:
    (st.info if p.passed else st.warning)(preflight_text(p))


def page_compare() -> None:
    from search.api import Query

    g = gallery()
    st.header("Compare")
    models = [m["name"] for m in g.models()]
    if len(models) < 2:
        st.info("Compare needs two models: upgrade the gallery's model first (Models page).")
        return
    history = g.model_history()
    default_old = history[-1] if history else models[0]
    c1, c2 = st.columns(2)
    old = c1.selectbox("Old model", models, index=models.index(default_old), key="cmp-old")
    new = c2.selectbox("New model", models, index=models.index(g.active_model), key="cmp-new")
    source = st.radio("Queries", ["Logged searches", "Upload a query set", "Labelled folder"],
                      horizontal=True, key="cmp-source")
    k = st.slider("Top-k", 1, 20, 5, key="cmp-k")
    queries = None
    if source == "Upload a query set":
        files = st.file_uploader("Query photos", accept_multiple_files=True, key="cmp-upload")
        queries = [Query(f.name, f.getvalue()) for f in files or []]
    elif source == "Labelled folder":
        folder = st.text_input("ImageFolder path (one sub-folder per class)", key="cmp-folder")
        if folder and (allowed := server_folder(folder)):
            queries = allowed
    if st.button("Run comparison", type="primary", key="cmp-run"):
        if source == "Logged searches":
            queries = "log"
        if queries:
            report = guarded(g.compare, queries, old, new, k)
            if report:
                st.session_state.report = report
    report = st.session_state.get("report") or g.latest_comparison()
    if report:
        show_report(g, report)
    show_backfill_curve(g)


def show_backfill_curve(g: Gallery) -> None:
    curve = g.latest_backfill_curve()
    if not curve:
        st.caption("Run `graceful backfill --curve LABELLED_DIR` to record quality vs fraction "
                   "backfilled; the curve appears here.")
        return
    st.subheader(f"Backfill curve · {md(curve['model'])} · order {curve['order']}")
    df = pd.DataFrame(curve["curve"]).set_index("fraction")[["top1", "map"]]
    st.line_chart(df)
    st.caption(f"{curve['queries']} labelled queries · area under the mAP curve {curve['auc_map']:.4f}")


def show_report(g: Gallery, report: dict) -> None:
    s = report["summary"]
    st.subheader(f"{md(s['old'])} → {md(s['new'])} · {s['queries']} queries · top-{s['k']}")
    cols = st.columns(5)
    cols[0].metric("overlap@k", f"{s['overlap_at_k']:.2f}")
    cols[1].metric("results gained", s["gained"])
    cols[2].metric("results lost", s["lost"])
    if s.get("labelled"):
        cols[3].metric("NFR (negative flips)", f"{s['nfr']:.3f}")
        cols[4].metric("PFR (positive flips)", f"{s['pfr']:.3f}")
        lost_at = s.get("lost_at_k") or {}
        if lost_at:
            lc = st.columns(len(lost_at))
            for col, (depth, value) in zip(lc, lost_at.items()):
                col.metric(f"lost@{depth}", f"{value:.3f}",
                           help=f"Share of queries that had a right photo in the old top-{depth} "
                                f"and have none in the new top-{depth}")
        st.dataframe(pd.DataFrame([{"model": s["old"], **s["old_metrics"]},
                                   {"model": s["new"], **s["new_metrics"]}]), hide_index=True)
    rows = render.lost_first(report["queries"])
    labelled = bool(s.get("labelled"))  # unlabelled: no right/wrong columns (they were None)
    df = pd.DataFrame([{"query": r["query"],
                        **({"lost every right photo": r.get("lost_all")} if labelled else {}),
                        "gained": len(r["gained"]), "lost": len(r["lost"]),
                        "overlap": r["overlap"],
                        **({"old right": r.get("old_correct"), "new right": r.get("new_correct")}
                           if labelled else {})} for r in rows])
    check = s.get("plan_check")
    if check:
        st.caption(f"{md(check['bridge'])}'s plan for the {check['path']} path, predicted → "
                   f"measured: " + " · ".join(
                       f"{k} {c['predicted']:.3f} ±{c['se']:.3f} → {c['measured']:.3f} "
                       f"({c['off_by_se']:.1f} SE)" for k, c in check["checks"].items()))
    st.bar_chart(df.set_index("query")[["gained", "lost"]].head(40), color=["#2e7d32", "#c62828"])
    st.dataframe(df, hide_index=True, width="stretch")
    d1, d2 = st.columns(2)
    d1.download_button("Export CSV", df.to_csv(index=False), "comparison.csv", "text/csv")
    d2.download_button("Export JSON", json.dumps(report, indent=1), "comparison.json",
                       "application/json")
    pick = st.selectbox("Inspect a query (those that lost every right photo first)",
                        df["query"].tolist(), key="cmp-pick")
    row = next(r for r in rows if r["query"] == pick)
    images = g.images(set(row["old"]) | set(row["new"]))
    lost, gained = set(row["lost"]), set(row["gained"])

    def hits(ids):
        return [{"image_id": i, "name": images[i].name, "path": str(g.image_path(images[i]))}
                for i in ids if i in images]

    left, right = st.columns(2)
    with left:
        st.markdown(f"**{md(report['summary']['old'])}** (lost in :red[red])")
        show_grid(hits(row["old"]), 3, {i: "red" for i in lost}, key="cmp-old", similar_buttons=False)
    with right:
        st.markdown(f"**{md(report['summary']['new'])}** (gained in :green[green])")
        show_grid(hits(row["new"]), 3, {i: "green" for i in gained}, key="cmp-new",
                  similar_buttons=False)


# -- layout -----------------------------------------------------------------------------------
def main() -> None:
    st.sidebar.title("Graceful")
    st.sidebar.caption("Upgrade your image-search model without re-indexing.")
    if "page" not in st.session_state:
        st.session_state.page = "Gallery"
    page = st.sidebar.radio("Page", PAGES, key="page")
    try:
        g = gallery()
    except GalleryError as e:
        st.error(str(e))
        st.stop()
    st.sidebar.caption(f"Gallery: `{g.home}`")
    {"Gallery": page_gallery, "Search": page_search, "Models": page_models,
     "Compare": page_compare}[page]()


main()
