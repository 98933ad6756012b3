"""What the feature cache saves the upgrade after a fit (search/ops/reuse.py).

A lite0 gallery of N Caltech-101 train photos (albums = class folders) fits a lite2 upgrade
(`train --from-gallery --backbone lite2`: the fit extracts lite2 features of its sample into
the feature cache), upgrades to it and backfills every photo. The upgrade and backfill then
run again on a copy of the gallery as it was before them, with the feature cache emptied (what
they cost before the reuse). Reported: seconds and photos decoded by each.

    python -m bench.reuse --photos 400 --json bench/out/reuse.json
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import caltech_files, machine, write_json


def upgrade_and_backfill(home: Path, model: str) -> dict:
    import search.ops.embedjob as job
    from search.api import Gallery

    decoded = [0]
    decode = job.decode

    def counting(data, size):
        decoded[0] += 1
        return decode(data, size)

    job.decode = counting  # the backfill's decodes (the pre-flight's: its report's `decoded`)
    try:
        with Gallery.open(home) as g:
            t0 = time.perf_counter()
            up = g.upgrade(model, force=True)  # (speed only: the verdict is not the point)
            t1 = time.perf_counter()
            done = g.backfill().done
            t2 = time.perf_counter()
    finally:
        job.decode = decode
    return {"upgrade_s": round(t1 - t0, 2), "preflight_decoded": up.preflight.decoded,
            "backfill_s": round(t2 - t1, 2), "backfilled": done, "backfill_decoded": decoded[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=400)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args()
    os.environ.pop("GRACEFUL_FEATURES", None)  # each gallery's own HOME/cache: one of them empty
    from search.api import Gallery

    with tempfile.TemporaryDirectory(prefix="graceful-reuse-") as tmp:
        root = Path(tmp)
        photos = root / "photos"
        for f in caltech_files("train", args.photos):
            (photos / f.parent.name).mkdir(parents=True, exist_ok=True)
            (photos / f.parent.name / f.name).symlink_to(f)
        home = root / "gallery"
        with Gallery.open(home) as g:
            g.add([photos])
            t0 = time.perf_counter()
            fit = g.train("lite2", "lite2-fit", force=True)
            fit_s = time.perf_counter() - t0
        before = root / "before"
        shutil.copytree(home, before, ignore=shutil.ignore_patterns("cache"))
        reused = upgrade_and_backfill(home, "lite2-fit")
        cold = upgrade_and_backfill(before, "lite2-fit")
    write_json(args.json_path, {
        "photos": args.photos, "fit_s": round(fit_s, 2), "fit_photos_embedded": fit.photos_embedded,
        "after_the_fit": reused, "cache_emptied": cold, "machine": machine()})


if __name__ == "__main__":
    main()
