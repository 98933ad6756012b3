"""The Maintenance page: check (and repair) the gallery, benchmark model generations on a
labelled train/test pair, train a compatible model from a labelled folder."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from search.jobs import bench_job, train_compatible_job
from search.ui.errors import guarded, opened_gallery
from search.ui.state import gallery
from search.ui.widgets import job_progress, server_folder, start_job


def check_section() -> None:
    """`graceful check [--repair]` on the page: is the gallery whole?"""
    g = gallery()
    st.subheader("Check the gallery")
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
        found = report.as_dict()
        (st.success if report.ok else st.error)(
            "The gallery is whole." if report.ok else f"{found['problems']} problems found "
                                                      "(see below).")
        st.dataframe(pd.DataFrame(found["findings"]), hide_index=True, width="stretch")


def generations_section() -> None:
    """Many generations (v1 -> v2 -> v3) and many devices (small query, large gallery models)."""
    g = gallery()
    st.subheader("Generations and devices")
    st.caption("Benchmarks on a labelled train/test pair. `chain`: lite0 -> lite1 -> lite2 with "
               "growing classes: compatibility matrix and the compatibility tax. `hetero`: "
               "lite0/lite1 query models compatible with a lite2 gallery model: accuracy vs "
               "images/s. Both also run from the CLI (`graceful bench chain|hetero`).")
    c1, c2 = st.columns(2)
    train = c1.text_input("Train folder (ImageFolder)", key="gen-train")
    test = c2.text_input("Test folder (same classes)", key="gen-test")
    k1, k2 = st.columns(2)
    kind = k1.selectbox("Benchmark", ["chain", "hetero"], key="gen-kind")
    loss = k2.selectbox("Head loss", ["ce", "lqf"], key="gen-loss")
    if st.button("Run benchmark", key="gen-start", disabled=not (train and test)):
        train_dir, test_dir = server_folder(train), server_folder(test)
        if train_dir and test_dir:
            start_job(f"bench-{kind}", bench_job(g.home, kind, train_dir, test_dir, loss))
    job_progress(f"bench-{kind}")
    for name, result in (guarded(g.reports.bench) or {}).items():
        st.markdown(f"**{name}**")
        if "matrix" in result:
            st.dataframe(pd.DataFrame({gal: {q: f"{row[gal]['top1']:.3f} ({row[gal]['map']:.3f})"
                                             for q, row in result["matrix"].items()}
                                       for gal in ("v1", "v2", "v3")}), width="stretch")
            st.caption("top-1 (mAP), query model x gallery model · compatibility tax: " + ", ".join(
                f"{gen} top-1 {t['top1']:+.4f}" for gen, t in result["compatibility_tax"].items()))
        else:
            st.dataframe(pd.DataFrame(result["rows"])[["query_model", "top1", "map",
                                                        "images_per_s"]],
                         hide_index=True, width="stretch")


def train_section() -> None:
    g = gallery()
    st.subheader("Train a compatible model")
    active = g.active_model
    if active is None:
        st.info("Index photos first: a compatible model is trained against the gallery's model.")
        return
    st.caption("A new frozen backbone plus a small head trained so its vectors live in this "
               "gallery's space: `adapter` learns from the gallery's own photos (no labels); "
               "`bct` / `pct` need a labelled folder (one sub-folder per class). `lqf` uses "
               "LQF-style least-squares heads (docs/BENCHMARKS.md). Upgrade to it on the Models "
               "page.")
    t1, t2, t3 = st.columns(3)
    method = t1.selectbox("Method", ["adapter", "bct", "pct"], key="train-method")
    backbone = t2.selectbox("Backbone", [e.name for e in g.models.available()
                                         if e.kind != "compatible" and e.name != active],
                            key="train-backbone")
    loss = t3.selectbox("Loss", ["ce", "lqf"], key="train-loss")
    folder = "" if method == "adapter" else st.text_input(
        "Labelled folder on the server", key="train-folder", placeholder="/path/to/ImageFolder")
    name = st.text_input("Name", f"{backbone}-{method}-{active}", key="train-name")
    if st.button("Train", key="train-start", disabled=method != "adapter" and not folder):
        data = None if method == "adapter" else server_folder(folder)
        if method == "adapter" or data:
            start_job("train", train_compatible_job(g.home, backbone, method, name, data, loss))
    job_progress("train")


def main() -> None:
    opened_gallery()
    st.header("Maintenance")
    check_section()
    st.divider()
    generations_section()
    st.divider()
    train_section()


main()
