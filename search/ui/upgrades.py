"""The Models page's upgrade sections: a pre-flight and its refusal (with the fitted next
step), a model's gallery transform, fitting an upgrade to this gallery, and the fit's report:
its upgrade plan (every path measured) or a bridge's, with a button per path."""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from search import render
from search.jobs import fit_job, reembed_job, transform_job
from search.ui.errors import guarded, md
from search.ui.state import gallery, state
from search.ui.widgets import flash, job_progress, pause_job, start_job
from search.units import duration_text


def try_upgrade(target: str, dry_run: bool = False, mode: str | None = None):
    """Upgrade (or check); a refusal is kept (state().refused) to show what was measured and
    the gallery-fitted next step, and its verdict stays in the models table (the Gallery's)."""
    state().refused = None
    return guarded(gallery().upgrade, target, dry_run=dry_run, mode=mode)


def upgraded(res, how: str = "") -> None:
    if res:
        flash(("success", f"Upgraded {md(res.previous)} → {md(res.model)} "
                          + (how or f"({res.mode} mode).")))


def preflight_text(p) -> str:
    text = render.preflight_summary(p)
    return text[0].upper() + text[1:]


def show_refusal(refused: dict) -> None:
    p, step = refused["preflight"], refused.get("next_step") or {}
    st.warning(f"Pre-flight refused {md(refused['model'])} for this gallery. {p['expectation']}")
    for reason in p["reasons"]:
        st.caption(f"• {reason}")
    if step:
        st.info(f"Next step: fit an upgrade to this gallery's own photos with {step['backbone']}: "
                f"about {duration_text(step['fit_seconds'])}, against "
                f"{duration_text(step['backfill_seconds'])} for re-embedding all "
                f"{step['photos']} photos.")
        if st.button("Train an upgrade for this gallery", key="fit-from-refusal"):
            g = gallery()
            start_job("fit", fit_job(g.home, step["backbone"], g.models.fit_name(step["backbone"])))
            state().refused = None
            st.rerun()


def transform_section(entry) -> None:
    """Move the gallery too: the target's gallery transform maps every stored vector into its
    own space (a background job: pause = stop, start again = continue)."""
    g = gallery()
    spec = (entry.meta.transform if entry is not None and entry.meta is not None else None) or {}
    if not spec or spec.get("input_space") not in (None, g.space):
        return
    kind = "its head applied to the stored vectors (exact)" if spec["kind"] == "head" else \
        "a map learned from the fit's photo pairs (approximate; backfill refines it)"
    st.caption(f"{md(entry.name)} can also move this gallery into its own space by arithmetic: "
               f"{kind}. No photo is decoded; the current vectors stay, so rollback is instant.")
    t1, t2 = st.columns(2)
    if t1.button(f"Upgrade and transform the gallery to {entry.name}", key="transform-start"):
        start_job("transform", transform_job(g.home, entry.name))
    if t2.button("Pause transform", key="transform-pause"):
        pause_job("transform")


def fit_section(entries, active: str) -> None:
    g = gallery()
    st.subheader("Fit an upgrade to this gallery")
    st.caption("Trains a new backbone's head on this gallery's own photos and albums, against the "
               "vectors it already stores (none is recomputed), and measures it on held-out photos "
               "before offering it. With albums it learns from them (PCT); without, it builds a "
               "label-free bridge to the new model (maps between the two spaces, and both "
               "generations searched together), each path measured against the whole gallery.")
    # the gallery's own model is a choice too: a head learned from the stored vectors alone
    bases = [e.name for e in entries
             if e.kind != "compatible" and (e.name != active or e.name == g.space)]
    f1, f2, f3 = st.columns(3)
    backbone = f1.selectbox("New backbone", bases, key="fit-backbone",
                            index=bases.index("lite2") if "lite2" in bases else 0,
                            help="The model that computed the stored vectors (e.g. lite0 on a lite0 "
                                 "gallery) learns from them alone: nothing is decoded, seconds.")
    method = f2.selectbox("Method", ["auto", "bridge", "pct", "bct", "adapter", "procrustes"],
                          key="fit-method", help="auto: pct with albums, else a label-free "
                          "bridge (query map, gallery map, both generations fused)")
    name = f3.text_input("Name", g.models.fit_name(backbone), key=f"fit-name-{backbone}")
    est = g.models.fit_estimate(backbone)
    if backbone == g.space:
        st.caption(f"{backbone} computed this gallery's vectors: the head learns from them and the "
                   f"albums alone, no photo is decoded (seconds).")
    else:
        st.caption(f"Runs {backbone} on {est.sample} of {est.photos} photos: about "
                   f"{duration_text(est.fit_seconds)} (a full re-embed: "
                   f"{duration_text(est.backfill_seconds)}).")
    b1, b2 = st.columns(2)
    if b1.button("Train an upgrade for this gallery", key="fit-start", type="primary"):
        start_job("fit", fit_job(g.home, backbone, name.strip(), method))
    if b2.button("Pause training", key="fit-pause"):
        pause_job("fit")
    job_progress("fit")
    report = g.reports.fit()
    if report:
        show_fit_report(report.as_dict())


def show_fit_report(r: dict) -> None:
    if r.get("method") == "bridge":
        return show_bridge_report(r)
    h, s = r["held_out"], r["sample"]
    (st.success if r["passed"] else st.error)(
        f"**{md(r['name'])}** ({r['method']} on {r['backbone']}): {r['verdict']}. "
        f"{md(r['expectation'])}")
    if r.get("plan"):
        show_plan(r)
    rows = [{"held-out photos": row["label"], "top-1": f"{row['top1']:.3f}",
             "mAP": f"{row['map']:.3f}", "NFR": "—" if row["nfr"] is None else f"{row['nfr']:.3f}"}
            for row in render.fit_pairs(r)]
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True)
    st.caption(f"Trained on {s['train']} photos"
               + (f" of {s['albums']} albums" if s["labelled"] else "")
               + f", measured on {s['held_out']} held-out photos of {r['gallery_photos']} · own "
                 f"stored vector ranks in the top {h['own_rank']:.2%} · neighbourhood agreement "
                 f"{h['agreement']:.2f} · {r['seconds']['total']:.0f} s · "
               + ("saved" if r.get("path") else "not saved"))


def show_plan(r: dict) -> None:
    """The upgrade plan: every path measured on the same held-out photos, quality against
    compute (one point per path), next to the buttons that take each path."""
    g = gallery()
    m = r["measured"]
    o = m["old"]
    rows = [{"path": "now (no change)" if p["path"] == "now"
             else p["path"] + (" ★" if p["recommended"] else ""),
             "top-1": p["top1"], "top-5": p["top5"], "mAP": p["map"], "NFR": p["nfr"] or 0.0,
             "lost@5": p["lost_at_5"] or 0.0,
             "kept": 1.0 if p["retention"] is None else p["retention"],
             "photos embedded": p["photos_embedded"] or 0, "time": p["time"] or "—",
             "flags": "; ".join(p["flags"])} for p in render.plan_table(r)]
    st.markdown(f"**Upgrade plan** · measured on {m['queries']} held-out photos (near duplicates "
                f"left out: {m['near_duplicates']['rule']}) · ★ recommended")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                 column_config={k: st.column_config.NumberColumn(format="%.3f")
                                for k in ("top-1", "top-5", "mAP", "NFR", "lost@5", "kept")})
    points = pd.DataFrame([{"seconds": max(p["seconds"], 0.1), "mAP": p["map"], "path": p["path"],
                            "lost@5": p["lost_at_5"]} for p in r["plan"]]
                          + [{"seconds": 0.1, "mAP": o["map"], "path": "now", "lost@5": 0.0}])
    base = alt.Chart(points).encode(
        x=alt.X("seconds", scale=alt.Scale(type="log"),
                title="time at this gallery's size (s, log)"),
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
        upgraded(try_upgrade(r["name"], mode="fused"))
    if b1.button(f"Queries only: upgrade to {r['name']}", key="plan-queries",
                 disabled=worse("queries"), help="measured worse" if worse("queries") else None):
        res = try_upgrade(r["name"])
        upgraded(res, res and f"in {res.switch_ms:.1f} ms; 0 vectors recomputed.")
    if b2.button("Transform the gallery", key="plan-transform", disabled=worse("transform"),
                 help="measured worse" if worse("transform") else None):
        start_job("transform", transform_job(g.home, r["name"]))
        st.rerun()  # its progress shows under Upgrade, above
    if b3.button("Transform, then backfill", key="plan-backfill",
                 disabled=worse("transform") or worse("backfill")):
        start_job("transform", transform_job(g.home, r["name"], then_backfill=True))
        st.rerun()


def show_bridge_report(r: dict) -> None:
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
    if not r.get("path"):
        return
    g = gallery()
    b1, b2, b3, b4 = st.columns(4)
    if b1.button("Query map", key="bridge-queries", help="lite2's queries mapped into the "
                 "stored space; nothing moves"):
        upgraded(try_upgrade(r["name"]))
    if b2.button("Gallery map", key="bridge-native", help="the stored vectors mapped into the "
                 "new model's space; it then serves natively"):
        start_job("transform", transform_job(g.home, r["name"], mode="native"))
        st.rerun()
    if b3.button(f"Fused @{r['weight']:.2f}", key="bridge-fused", type="primary",
                 help="old and new generations searched together"):
        start_job("transform", transform_job(g.home, r["name"], mode="fused", weight=r["weight"]))
        st.rerun()
    if b4.button(f"Re-embed with {r['backbone']}", key="bridge-reembed"):
        start_job("reembed", reembed_job(g.home, r["backbone"]))
        st.rerun()
