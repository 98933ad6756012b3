"""The Models page: which models can query this gallery, upgrade (pre-flight, refusal and the
fitted next step), rollback, a gallery transform or a re-embed, fitting an upgrade to this
gallery and its plan, the optional backfill, the compatibility matrix."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from search import render
from search.api import BACKFILL_ORDERS
from search.jobs import backfill_job, reembed_job
from search.ui.errors import guarded, md, opened_gallery
from search.ui.state import gallery, state
from search.ui.upgrades import (
    fit_section,
    preflight_text,
    show_refusal,
    transform_section,
    try_upgrade,
)
from search.ui.widgets import flash, job_progress, pause_job, show_flash, start_job


def can_query(e, active: str | None, space: str | None) -> str:
    """The table's verdict: measured (the fit's, or a pre-flight run in this process), never
    just "the spaces match" (a model trained elsewhere can share the space and still make
    search worse)."""
    g = gallery()
    if e.name == active:
        return "active"
    if space not in (e.space, g.models.serving_space(e.name)):
        return "needs re-embed"
    return g.models.standing_verdict(e) or "same space · not measured yet (Check compatibility)"


def overview(entries, active: str | None, space: str | None) -> None:
    g = gallery()
    where = g.vectors.store()
    served = ("FAISS index files" if where["kind"] == "faiss"
              else f"Milvus at `{where['uri']}` ({where['mode']})")
    mode = g.models.serving()
    how = (" + ".join(f"{md(m)} {w:.2f}" for m, w in zip(mode["models"], mode["weights"]))
           if mode["mode"] == "fused" else "")
    st.markdown(f"Active model: **{md(active or '—')}** · gallery space **{md(space or '—')}** · "
                f"serving mode **{mode['mode']}**" + (f" ({how})" if how else "")
                + f" · searches served by {served}")
    st.dataframe(pd.DataFrame([{
        "model": e.name, "kind": e.kind, "space": e.space, "dim": e.dim,
        "compatible with": ", ".join(e.compatible_with),
        "can query this gallery": can_query(e, active, space)} for e in entries]),
        hide_index=True, width="stretch")
    bad = g.models.unreadable()
    if bad:
        st.warning("Unreadable model files (left out): " + "; ".join(
            md(f"{path.name}: {reason}") for path, reason in bad))


def upgrade_section(entries, active: str, space: str | None) -> None:
    g = gallery()
    st.subheader("Upgrade")
    choices = [e.name for e in entries if e.name != active]
    target = st.selectbox("New model", choices, key="upgrade-target",
                          index=choices.index("lite2-compat-lite0")
                          if "lite2-compat-lite0" in choices else 0)
    c1, c2, c3 = st.columns(3)
    if c1.button("Check compatibility", key="dry-run"):
        r = try_upgrade(target, dry_run=True)
        if r:
            (st.info if r.preflight.passed else st.warning)(preflight_text(r.preflight))
    if c2.button("Upgrade", type="primary", key="upgrade"):
        r = try_upgrade(target)
        if r:
            flash(("info", preflight_text(r.preflight)),
                  ("success", f"Upgraded {md(r.previous)} → {md(r.model)} in {r.switch_ms:.1f} ms; "
                              f"0 vectors recomputed."))
    refused = state().refused
    if refused and refused["model"] == target:
        show_refusal(refused)
    entry = next((e for e in entries if e.name == target), None)
    transform_section(entry)
    job_progress("transform")  # started here or from the plan below
    if entry is not None and entry.space not in (None, space):
        st.caption(f"{md(target)} lives in space {md(entry.space)}: it cannot search this "
                   "gallery's vectors. Re-embed every photo into a second index alongside; search "
                   "keeps using the current one until it is complete, then switches.")
        if st.button(f"Re-embed the gallery with {target}", key="reembed-start"):
            start_job("reembed", reembed_job(g.home, target))
        job_progress("reembed")
    history = g.models.history()
    if c3.button(f"Roll back to {history[-1]}" if history else "Roll back", disabled=not history,
                 key="rollback"):
        r = guarded(g.rollback)
        if r:
            msgs = [("success", f"Rolled back {md(r.previous)} → {md(r.model)} in "
                                f"{r.switch_ms:.1f} ms; {r.kept_vectors} vectors of "
                                f"{md(r.previous)} stay searchable.")]
            if r.need_reembed:
                msgs.append(("warning", f"{r.need_reembed} photos have no {md(r.model)} vector: "
                                        "run the backfill."))
            flash(*msgs)


def backfill_section() -> None:
    g = gallery()
    st.subheader("Backfill (optional)")
    found = guarded(g.backfill_status)
    status = found.as_dict() if found else {}
    st.caption(f"{status.get('fraction_backfilled', 0):.0%} of the gallery is embedded by "
               f"{md(status.get('model'))} · {status.get('older_vectors', 0)} older vectors · "
               f"{status.get('missing', 0)} missing")
    order = st.selectbox("Order", BACKFILL_ORDERS, key="backfill-order")
    b1, b2 = st.columns(2)
    if b1.button("Start / resume backfill", key="backfill-start"):
        start_job("backfill", backfill_job(g.home, order))
    if b2.button("Pause", key="backfill-pause"):
        pause_job("backfill")
    job_progress("backfill")


def matrix_section() -> None:
    matrix = guarded(gallery().models.compatibility)
    st.subheader("Compatibility matrix")
    if matrix and matrix["models"]:
        cells = matrix["cells"]
        st.dataframe(pd.DataFrame({sp: {name: render.compat_cell(cells[name][sp])
                                        for name in matrix["models"]}
                                   for sp in matrix["spaces"]}), width="stretch")
        st.caption("Rows: query models this gallery has used; columns: spaces its vectors live in.")


def main() -> None:
    g = opened_gallery()
    st.header("Models")
    show_flash()
    entries = g.models.available()
    active, space = g.active_model, g.space
    overview(entries, active, space)
    if active is None:
        st.info("Index photos first; then upgrades appear here.")
        return
    upgrade_section(entries, active, space)
    fit_section(entries, active)
    backfill_section()
    matrix_section()
    st.caption("Checking the gallery, benchmarks of model generations and training a compatible "
               "model from a labelled folder are on the Maintenance page.")


main()
