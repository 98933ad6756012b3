"""How fast the app shows search results on a ~9k-photo gallery (all Caltech-101 photos).

    python -m bench.app_latency --home /tmp/graceful-app-bench --json bench/out/app.json

Indexes every Caltech-101 photo (train, test, distractors) once into --home, then drives the
real app through Streamlit's AppTest: upload a query photo on the Search page and time the
script run that embeds it, searches and renders the 12-result grid (thumbnails cold, then warm).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench.common import CALTECH, machine, percentiles, write_json

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", default="/tmp/graceful-app-bench")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    os.environ["GRACEFUL_HOME"] = args.home
    os.environ.setdefault("GRACEFUL_THREADS", "2")
    from streamlit.testing.v1 import AppTest

    from search.api import Gallery
    from search.ops.ingest import ingest
    from search.runtime import configure_threads

    configure_threads()
    g = Gallery.open(args.home, create=True)
    report = ingest(g.core, [CALTECH / "train", CALTECH / "test", CALTECH / "distractors"])
    n = g.core.catalog.images.count_images()
    g.close()
    queries = sorted((CALTECH / "test").rglob("*.jpg"))[:: 97][: args.repeat + 1]
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    at.switch_page("search/ui/pages/search_page.py").run()
    runs = []
    for q in queries:
        at.file_uploader(key="query-upload").set_value((q.name, q.read_bytes(), "image/jpeg"))
        t = time.perf_counter()
        at.run()
        runs.append(time.perf_counter() - t)
        assert not at.exception, at.exception
    shown = [h.value for h in at.subheader]
    out = {"machine": machine(), "command": " ".join(sys.argv), "gallery_photos": n,
           "ingest": report.as_dict() | {"skipped_files": len(report.skipped_files)
                                         if hasattr(report, "skipped_files") else len(report.skipped)},
           "first_search_run_s": round(runs[0], 3),
           "later_search_runs": percentiles(runs[1:]), "last_header": shown[-1] if shown else None}
    write_json(args.json, out)


if __name__ == "__main__":
    main()
