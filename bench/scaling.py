"""Milvus and Ray against the embedded default, in the same run (docs/BENCHMARKS.md section 10).

    python -m bench.scaling --sizes 10000,100000 --ray-photos 2000 --json bench/out/scaling.json

search   per size: p50/p95 of a Graceful search (store search + catalog rows) and of the bare
         store call, recall@10 against exact FAISS search, build time; FAISS flat/auto and Milvus
         Lite FLAT / IVF_FLAT on the same photo-like vectors (real lite0 embeddings + noise).
upgrade  a 100k-photo gallery on each store: cold open, then upgrade() (pre-flight on 64 real
         photos + the switch); nothing is recomputed on either store.
ray      a backfill of N real photos (lite0 -> lite2-compat-lite0): plain path, Ray with 1 and 2
         workers, each from the same starting gallery; wall time incl. Ray start and the rate
         once the workers run; the catalog writer's own ceiling; the projection to 10M photos.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import (caltech_files, machine, percentiles, rss_mib, synthetic_vectors,
                          timed, write_json)
from search.runtime import configure_threads

NEW = "lite2-compat-lite0"


def photo_like_centers(n: int = 300) -> np.ndarray:
    from models import registry

    model = registry.load("lite0")
    from models.imageio import decode

    images = [decode(f.read_bytes(), model.info.image_size).image for f in caltech_files("test", n)]
    return model.embed_images(images)


def fill_catalog(home: Path, size: int, centers: np.ndarray, space: str = "lite0"):
    """A gallery whose catalog holds `size` photo-like vectors of `space` (no image files)."""
    from search.gallery import Gallery

    g = Gallery.open(home, create=True, store="faiss")
    gen = np.random.default_rng(size + 1)
    with g.catalog.transaction():
        g.catalog.db.conn.executemany(
            "INSERT INTO images (id, sha256, name, ext, bytes, width, height, format, source,"
            " added_at) VALUES (?, ?, ?, '.jpg', 0, 0, 0, 'JPEG', 'synthetic', 0)",
            ((i, f"{i:064x}", f"img{i}.jpg") for i in range(1, size + 1)))
        for start in range(1, size + 1, 20000):
            n = min(20000, size + 1 - start)
            g.catalog.put_vectors(list(range(start, start + n)), synthetic_vectors(centers, n, gen),
                                  "lite0", space)
    return g


def search_section(sizes: list[int], centers: np.ndarray, repeat: int) -> list[dict]:
    out = []
    for size in sizes:
        home = Path(tempfile.mkdtemp(prefix="graceful-bench-scale-"))
        try:
            g = fill_catalog(home, size, centers)
            queries = synthetic_vectors(centers, repeat, np.random.default_rng(7))
            row: dict = {"vectors": size}
            exact = None
            configs = [("faiss", "flat"), ("faiss", "auto"), ("milvus", "flat"), ("milvus", "ivf")]
            for store, kind in configs:
                if store == "faiss" and kind == "auto" and size < 50_000:
                    continue
                if store == "milvus" and kind == "ivf" and size < 10_000:
                    continue
                g.choose_store(store, move=True)
                rss0 = rss_mib()
                t0 = time.perf_counter()
                built = g.rebuild_index("lite0", kind)
                build_s = time.perf_counter() - t0
                idx = g.index("lite0")
                it = iter(range(10**9))
                bare = timed(lambda: idx.search(queries[next(it) % repeat][None], 10), repeat)
                it2 = iter(range(10**9))
                ours = timed(lambda: g.search_vectors(queries[next(it2) % repeat][None], 10,
                                                      "bench", "lite0"), repeat)
                _, ids = idx.search(queries, 10)
                if exact is None:
                    exact = ids  # faiss flat comes first: exact search
                recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)]))
                key = f"{store}/{kind}"
                row[key] = {"built": built, "build_s": round(build_s, 1),
                            "graceful_search": percentiles(ours), "store_search": percentiles(bare),
                            "recall_at_10_vs_exact": round(recall, 4),
                            "rss_growth_mib": round(rss_mib() - rss0, 1)}
                print(size, key, row[key], flush=True)
            base = row["faiss/flat"]["graceful_search"]["p50_ms"]
            for key in [k for k in row if k.startswith("milvus")]:
                row[key]["p50_over_faiss_flat"] = round(
                    row[key]["graceful_search"]["p50_ms"] / base, 2)
            out.append(row)
            g.close()
        finally:
            shutil.rmtree(home, ignore_errors=True)
    return out


def upgrade_section(size: int, centers: np.ndarray) -> list[dict]:
    """upgrade() on a `size`-photo gallery per store. The stored files of the synthetic photos
    are hard links to real Caltech photos so that the pre-flight embeds real images; their
    vectors are synthetic, so the check refuses and the upgrade is forced (timed the same)."""
    from search.gallery import Gallery
    from search.upgrade import upgrade

    real = caltech_files("test", 200)
    out = []
    for store in ("faiss", "milvus"):
        home = Path(tempfile.mkdtemp(prefix="graceful-bench-up-"))
        try:
            g = fill_catalog(home, size, centers)
            g.ensure_model("lite0")
            g.choose_store(store, move=True)
            for i, row in g.catalog.images(range(1, size + 1)).items():
                dest = g.store.path(row.sha256, row.ext)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.hardlink_to(real[i % len(real)])
            g.rebuild_index("lite0", "auto")
            g.close()
            t0 = time.perf_counter()
            g = Gallery.open(home)
            g.index()
            open_s = time.perf_counter() - t0
            before = g.catalog.vector_counts()
            t0 = time.perf_counter()
            result = upgrade(g, NEW, force=True)
            total = time.perf_counter() - t0
            assert g.catalog.vector_counts() == before  # nothing recomputed
            out.append({"store": store, "gallery": size, "cold_open_s": round(open_s, 3),
                        "upgrade_total_s": round(total, 3),
                        "preflight_s": result.preflight.seconds,
                        "switch_ms": result.switch_ms, "vectors_recomputed": 0})
            print(out[-1], flush=True)
            g.close()
        finally:
            shutil.rmtree(home, ignore_errors=True)
    return out


def ray_section(n_photos: int, workers: list[int]) -> dict:
    from search import backfill as bf
    from search.gallery import Gallery
    from search.raypool import RayOptions

    root = Path(tempfile.mkdtemp(prefix="graceful-bench-ray-"))
    try:
        template = root / "template"
        g = Gallery.open(template, create=True)
        g.add(caltech_files("train", n_photos))
        g.upgrade(NEW, force=True)
        n = g.catalog.count_images()
        g.close()
        runs = []
        for label, options in [("plain", None)] + [
                (f"ray-{w}", RayOptions("auto", workers=w)) for w in workers]:
            home = root / label
            shutil.copytree(template, home)
            g = Gallery.open(home)
            marks: list[tuple[float, int]] = []  # (time, photos done) at each committed batch
            t0 = time.perf_counter()
            bf.backfill(g, on_progress=lambda st: marks.append((time.perf_counter(), st.done)),
                        ray=options)
            wall = time.perf_counter() - t0
            counts = {r["model"]: r["vectors"] for r in g.catalog.vector_counts()}
            assert counts[NEW] == n, counts
            g.close()
            (t_first, d_first), (t_last, d_last) = marks[0], marks[-1]
            runs.append({"run": label, "photos": n, "wall_s": round(wall, 1),
                         "images_per_s": round(n / wall, 2),
                         "first_batch_after_s": round(t_first - t0, 1),
                         "steady_images_per_s": round((d_last - d_first) / (t_last - t_first), 2)})
            print(runs[-1], flush=True)
            shutil.rmtree(home, ignore_errors=True)
        return {"runs": runs, "catalog_writer": writer_ceiling(template)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def writer_ceiling(template: Path, batches: int = 200, batch: int = 16) -> dict:
    """Vectors/s the single catalog writer commits (one transaction per batch of 16, 1280-d):
    the ceiling of any number of Ray workers feeding one catalog."""
    from search.gallery import Gallery

    home = template.parent / "writer"
    shutil.copytree(template, home)
    try:
        g = Gallery.open(home)
        ids = g.catalog.space_members("lite0")[: batch * batches].tolist()
        v = np.random.default_rng(0).standard_normal((len(ids), 1280), dtype=np.float32)
        t0 = time.perf_counter()
        for s in range(0, len(ids), batch):
            with g.catalog.transaction():
                g.catalog.put_vectors(ids[s:s + batch], v[s:s + batch], "writer-bench", "lite0")
        rate = len(ids) / (time.perf_counter() - t0)
        g.close()
        return {"vectors_per_s": round(rate, 1), "batch": batch}
    finally:
        shutil.rmtree(home, ignore_errors=True)


def projection(per_worker_rate: float, writer_rate: float, photos: int = 10_000_000,
               cores: tuple[int, ...] = (2, 16), machines: tuple[int, ...] = (1, 10, 50)) -> list[dict]:
    """T(N machines x C cores) = photos / min(N * C * r_worker, writer ceiling)."""
    out = []
    for c in cores:
        for m in machines:
            rate = min(m * c * per_worker_rate, writer_rate)
            out.append({"machines": m, "cores_each": c, "images_per_s": round(rate, 1),
                        "hours": round(photos / rate / 3600, 2),
                        "bound_by": "catalog writer" if rate == writer_rate else "workers"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--upgrade-size", type=int, default=100_000)
    ap.add_argument("--ray-photos", type=int, default=2000)
    ap.add_argument("--ray-workers", default="1,2")
    ap.add_argument("--sections", default="search,upgrade,ray")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    configure_threads(args.threads)
    sections = args.sections.split(",")
    out: dict = {"machine": machine(), "command": " ".join(sys.argv)}
    centers = photo_like_centers() if {"search", "upgrade"} & set(sections) else None
    if "search" in sections:
        out["search"] = search_section([int(s) for s in args.sizes.split(",")], centers, args.repeat)
    if "upgrade" in sections:
        out["upgrade"] = upgrade_section(args.upgrade_size, centers)
    if "ray" in sections:
        ray = ray_section(args.ray_photos, [int(w) for w in args.ray_workers.split(",")])
        one = next((r for r in ray["runs"] if r["run"] == "ray-1"), None)
        if one:
            ray["projection_10m"] = projection(one["steady_images_per_s"],
                                               ray["catalog_writer"]["vectors_per_s"])
        out["ray"] = ray
    write_json(args.json, out)


if __name__ == "__main__":
    main()
