"""The Compare page: two models on the same queries (logged searches, an uploaded set, a
labelled folder): gained and lost results, flip rates, lost@k, each query side by side. The
inspected query is a deep link: `/compare?query=NAME`. And the backfill's quality curve."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from search import render
from search.api import Query
from search.ui.errors import guarded, md, opened_gallery
from search.ui.state import gallery, state
from search.ui.widgets import server_folder, show_grid


def run_section(models: list[str]) -> None:
    g = gallery()
    history = g.models.history()
    default_old = history[-1] if history else models[0]
    active = g.active_model
    assert active is not None  # models were registered by activating them: one is active
    c1, c2 = st.columns(2)
    old = c1.selectbox("Old model", models, index=models.index(default_old), key="cmp-old")
    new = c2.selectbox("New model", models, index=models.index(active), key="cmp-new")
    source = st.radio("Queries", ["Logged searches", "Upload a query set", "Labelled folder"],
                      horizontal=True, key="cmp-source")
    k = st.slider("Top-k", 1, 20, 5, key="cmp-k")
    queries: list | Path | str | None = None
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
                state().report = report.as_dict()
                st.query_params.pop("query", None)  # a new report: its own first query


def summary(s: dict) -> None:
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
            for col, (depth, value) in zip(st.columns(len(lost_at)), lost_at.items()):
                col.metric(f"lost@{depth}", f"{value:.3f}",
                           help=f"Share of queries that had a right photo in the old top-{depth} "
                                f"and have none in the new top-{depth}")
        st.dataframe(pd.DataFrame([{"model": s["old"], **s["old_metrics"]},
                                   {"model": s["new"], **s["new_metrics"]}]), hide_index=True)
    check = s.get("plan_check")
    if check:
        st.caption(f"{md(check['bridge'])}'s plan for the {check['path']} path, predicted → "
                   f"measured: " + " · ".join(
                       f"{k} {c['predicted']:.3f} ±{c['se']:.3f} → {c['measured']:.3f} "
                       f"({c['off_by_se']:.1f} SE)" for k, c in check["checks"].items()))


def show_report(report: dict) -> None:
    s = report["summary"]
    summary(s)
    rows = render.lost_first(report["queries"])
    labelled = bool(s.get("labelled"))  # unlabelled: no right/wrong columns (they were None)
    df = pd.DataFrame([{"query": r["query"],
                        **({"lost every right photo": r.get("lost_all")} if labelled else {}),
                        "gained": len(r["gained"]), "lost": len(r["lost"]),
                        "overlap": r["overlap"],
                        **({"old right": r.get("old_correct"), "new right": r.get("new_correct")}
                           if labelled else {})} for r in rows])
    st.bar_chart(df.set_index("query")[["gained", "lost"]].head(40), color=["#2e7d32", "#c62828"])
    st.dataframe(df, hide_index=True, width="stretch")
    d1, d2 = st.columns(2)
    d1.download_button("Export CSV", df.to_csv(index=False), "comparison.csv", "text/csv")
    d2.download_button("Export JSON", json.dumps(report, indent=1), "comparison.json",
                       "application/json")
    names = df["query"].tolist()
    if st.session_state.get("cmp-pick") not in names:  # first shown, or another report
        linked = st.query_params.get("query")  # the deep link
        st.session_state["cmp-pick"] = linked if linked in names else names[0]
    pick = st.selectbox("Inspect a query (those that lost every right photo first)", names,
                        key="cmp-pick")
    st.query_params["query"] = pick  # the address names the query shown
    side_by_side(report, next(r for r in rows if r["query"] == pick))


def side_by_side(report: dict, row: dict) -> None:
    g = gallery()
    images = g.photos.rows(set(row["old"]) | set(row["new"]))
    lost, gained = set(row["lost"]), set(row["gained"])

    def hits(ids):
        return [{"image_id": i, "name": images[i].name, "path": str(g.photos.path(images[i]))}
                for i in ids if i in images]

    left, right = st.columns(2)
    with left:
        st.markdown(f"**{md(report['summary']['old'])}** (lost in :red[red])")
        show_grid(hits(row["old"]), 3, {i: "red" for i in lost}, key="cmp-old",
                  similar_buttons=False)
    with right:
        st.markdown(f"**{md(report['summary']['new'])}** (gained in :green[green])")
        show_grid(hits(row["new"]), 3, {i: "green" for i in gained}, key="cmp-new",
                  similar_buttons=False)


def backfill_curve() -> None:
    curve = guarded(gallery().reports.backfill_curve)
    if not curve:
        st.caption("Run `graceful backfill --curve LABELLED_DIR` to record quality vs fraction "
                   "backfilled; the curve appears here.")
        return
    st.subheader(f"Backfill curve · {md(curve['model'])} · order {curve['order']}")
    st.line_chart(pd.DataFrame(curve["curve"]).set_index("fraction")[["top1", "map"]])
    st.caption(f"{curve['queries']} labelled queries · area under the mAP curve "
               f"{curve['auc_map']:.4f}")


def main() -> None:
    g = opened_gallery()
    st.header("Compare")
    models = [m["name"] for m in g.models.registered()]
    if len(models) < 2:
        st.info("Compare needs two models: upgrade the gallery's model first (Models page).")
        return
    run_section(models)
    saved = None if state().report else guarded(g.reports.comparison)
    report = state().report or (saved.as_dict() if saved else None)
    if report:
        show_report(report)
    backfill_curve()


main()
