"""Widgets the pages share: the photo grid, a background job's progress, messages that outlive
a rerun, and the check on folders typed by a user."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from search.api import import_roots, links_outside
from search.jobs import Job
from search.thumbnails import preview
from search.ui import page_script
from search.ui.errors import md
from search.ui.state import job_runner, state

MAX_UPLOAD_BYTES = 50 * 1024 * 1024


@st.cache_data(max_entries=4096, show_spinner=False)
def thumbnail(path: str, size: int = 256) -> bytes | None:
    return preview(Path(path), size)


def show_grid(hits, columns: int = 6, highlight: dict[int, str] | None = None, key: str = "grid",
              similar_buttons: bool = True) -> None:
    """Photos in a grid (dicts: image_id, name, path, and sha256, score, embedded_by, album when
    known); "Similar" opens the Search page's deep link for a photo."""
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
                ref = hit.get("sha256", "")[:16] or str(hit["image_id"])
                st.switch_page(page_script("search"), query_params={"similar": ref})


def start_job(name: str, work) -> Job:
    """A background job (search.jobs), at most one per name in this process."""
    return job_runner().start(name, work)


def pause_job(name: str) -> None:
    job = job_runner().get(name)
    if job:
        job.stop()


def job_progress(name: str) -> None:
    """The job called `name`: polled every second while it runs, then shown as it ended. Only
    a running job polls: four idle progress widgets rerunning every second each took CPU on
    the server for as long as a Models page stayed open."""
    job = job_runner().get(name)
    if job is None:
        return
    if job.running:
        _live_progress(name)
    else:
        _show_job(job)


@st.fragment(run_every=1.0)
def _live_progress(name: str) -> None:
    job = job_runner().get(name)
    if job is None:
        return
    _show_job(job)
    if not job.running:
        st.rerun()  # the whole page, once: it shows what the job made, and this stops polling


def _show_job(job: Job) -> None:
    name = job.name
    eta = f" · ETA {job.eta_seconds:.0f} s" if job.eta_seconds else ""
    if job.total:
        speed = f" · {job.rate:.1f} img/s{eta}" if job.running and job.rate else ""
        st.progress(job.fraction,
                    text=f"{name.capitalize()} {job.status}: {job.done}/{job.total}{speed}")
    else:
        st.caption(f"{name.capitalize()} {job.status}…")
    if job.status == "failed":
        st.error(md(job.message))
    elif job.message:
        st.caption(md(job.message))


def flash(*messages: tuple[str, str]) -> None:
    """Show messages after a rerun, so the page above them already reflects the change."""
    state().flash = list(messages)
    st.rerun()


def show_flash() -> None:
    messages, state().flash = state().flash, []
    for kind, text in messages:
        getattr(st, kind)(text)


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
    escaping = links_outside(folder, roots)
    if escaping:
        st.error(md(f"{escaping[0]} links to {escaping[0].resolve()}, outside the folders this "
                    f"server may read: refused ({len(escaping)} such link"
                    f"{'s' if len(escaping) > 1 else ''} in {folder})."))
        return None
    return folder
