"""Upgrade wall time vs gallery size, next to what a full backfill would cost; backfill curves.

    python -m bench.upgrade --sizes 1000,10000,100000 --json bench/out/upgrade.json

Galleries: 48 real Caltech-101 photos (the pre-flight sample reads real images) plus synthetic
lite0-space vectors up to the size. Backfill cost = measured new-model images/s x N.
Curves: Caltech-101 test split, old = lite0 vectors, new = lite2-compat-lite0, queries = all
photos embedded by the new model, leave-one-out; metric vs fraction backfilled for each order.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import CALTECH, caltech_files, machine, write_json
from search.runtime import configure_threads

NEW = "lite2-compat-lite0"


def synthetic_gallery(home: Path, size: int, real: list[Path]):
    from search.api import Gallery
    from search.ops.ingest import ingest

    g = Gallery.open(home, create=True)
    ingest(g.core, real)
    n_real = g.core.catalog.images.count_images()
    rng = np.random.default_rng(size)
    with g.core.catalog.transaction():
        g.core.catalog.conn.db.conn.executemany(
            "INSERT INTO images (sha256, name, ext, bytes, width, height, format, source, added_at)"
            " VALUES (?, ?, '.jpg', 0, 0, 0, 'JPEG', 'synthetic', 0)",
            ((f"{i:064x}", f"synthetic{i}.jpg") for i in range(size - n_real)))
        ids = [r[0] for r in g.core.catalog.conn.db.execute("SELECT id FROM images WHERE source = 'synthetic'")]
        for s in range(0, len(ids), 20000):
            chunk = ids[s:s + 20000]
            v = rng.standard_normal((len(chunk), 1280), dtype=np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            g.core.catalog.vectors.put_vectors(chunk, v, "lite0", "lite0")
    g.core.rebuild_index()
    return g


def upgrade_times(sizes: list[int], new_rate: float) -> list[dict]:
    """upgrade() = pre-flight (48 photos embedded by the new model + one index search) + switch.

    The pre-flight's embedding part touches 48 photos whatever the gallery size, so it is timed
    once, by a real upgrade() of a real 48-photo gallery. Each synthetic gallery (48 real
    photos + random lite0 vectors) times the parts that could grow with N: the pre-flight's
    index search for its sample of queries and the switch transaction, run by
    upgrade(--force) itself."""
    from search.api import Gallery
    from search.ops.ingest import ingest
    from search.ops.upgrade import PREFLIGHT_SAMPLE, upgrade

    real = caltech_files("test", 48)
    home = Path(tempfile.mkdtemp(prefix="graceful-bench-up-"))
    try:
        g = Gallery.open(home, create=True)
        ingest(g.core, real)
        t = time.perf_counter()
        small = upgrade(g.core, NEW)
        real_total = time.perf_counter() - t
    finally:
        shutil.rmtree(home, ignore_errors=True)
    out = [{"gallery": 48, "upgrade_total_s": round(real_total, 3),
            "preflight_s": small.preflight.seconds, "switch_ms": small.switch_ms,
            "preflight_self_recall": small.preflight.self_recall}]
    print(out[-1], flush=True)
    for size in sizes:
        home = Path(tempfile.mkdtemp(prefix="graceful-bench-up-"))
        try:
            g = synthetic_gallery(home, size, real)
            idx = g.core.index()
            queries = idx.vectors(range(1, PREFLIGHT_SAMPLE + 1))
            t = time.perf_counter()
            idx.search(queries, 10)
            search_s = time.perf_counter() - t
            result = upgrade(g.core, NEW, force=True)  # random vectors cannot pass the check
            estimate = small.preflight.seconds + search_s + result.switch_ms / 1000
            out.append({"gallery": size, "upgrade_total_s": round(estimate, 3),
                        "preflight_embed_s": small.preflight.seconds,
                        "preflight_search_s": round(search_s, 4),
                        "switch_ms": result.switch_ms, "vectors_recomputed": 0,
                        "full_backfill_estimate_s": round(size / new_rate, 1),
                        "full_backfill_estimate_h": round(size / new_rate / 3600, 2)})
            print(out[-1], flush=True)
        finally:
            shutil.rmtree(home, ignore_errors=True)
    return out


def new_model_rate(n: int = 96) -> float:

    from models import registry
    from models.imageio import decode

    model = registry.load(NEW)
    files = caltech_files("train", n)
    tensors = [model.preprocess(decode(f.read_bytes(), model.info.image_size).image) for f in files]
    model.embed_batch(model.collate(tensors[:16]))
    t = time.perf_counter()
    for i in range(0, n, 16):
        model.embed_batch(model.collate(tensors[i:i + 16]))
    return n / (time.perf_counter() - t)


def backfill_curves(cache: Path, steps: int = 10) -> dict:
    from models import registry
    from models.features import extract
    from models.imagefolder import scan

    from search.ops.backfill import area_under_curve, quality_curve

    test = scan(CALTECH / "test")
    old = extract(registry.load("lite0"), test.files, cache)
    new_model = registry.load(NEW)
    lite2 = extract(new_model.backbone, test.files, cache)
    new = new_model.project(lite2)
    n = len(old)
    rng = np.random.default_rng(0)
    # "most retrieved": a simulated query log of 1,000 old-model searches (top-10 each)
    q = rng.choice(n, 1000)
    sims = old[q] @ old.T
    sims[np.arange(len(q)), q] = -np.inf
    counts = np.bincount(np.argsort(-sims, 1)[:, :10].ravel(), minlength=n)
    s_old = old @ old.T
    np.fill_diagonal(s_old, -np.inf)
    top3 = -np.sort(-s_old, axis=1)[:, :3]
    orders = {
        "random": rng.permutation(n),
        "oldest": np.arange(n),  # ingest order = file order
        "most-retrieved": np.argsort(-counts, kind="stable"),
        "uncertainty": np.argsort(top3[:, 1] - top3[:, 2], kind="stable"),
    }
    out = {}
    for name, order in orders.items():
        curve = quality_curve(old, new, test.labels, order, steps)
        out[name] = {"curve": curve, "auc_map": area_under_curve(curve, "map"),
                     "auc_top1": area_under_curve(curve, "top1")}
        print(name, out[name]["auc_map"], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "graceful-bench-cache"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    configure_threads(args.threads)
    rate = new_model_rate()
    out = {"machine": machine(), "command": " ".join(sys.argv),
           "new_model_images_per_s": round(rate, 2)}
    out["upgrade"] = upgrade_times([int(s) for s in args.sizes.split(",")], rate)
    out["backfill_curves"] = backfill_curves(Path(args.cache))
    write_json(args.json, out)


if __name__ == "__main__":
    main()
