"""The catalog on SQLite and on PostgreSQL, in the same run (docs/BENCHMARKS.md section 18).

    python -m bench.catalog --sizes 10000,100000 --json bench/out/catalog.json

Per catalog, one gallery grown to each size in turn (synthetic 1280-d vectors: the catalog's
work does not depend on what the vectors mean; no photo is decoded or embedded):
ingest    photos/s committed the way ingest commits them: per batch of 16, one transaction
          of 16 image rows + their vectors + the space's version (add_image, put_vectors)
search    p50/p95 of the catalog's share of a warm search (the space version check and the hit
          rows of 10 results), and of a whole Graceful search of a vector (GalleryCore.
          search_vectors: version check + exact FAISS flat search + hit rows), same queries
open      a new process's first search: its FAISS index built from the catalog (serving_rows)
upgrade   the switch's transaction (GalleryCore.activate: register, history, active model,
          event), p50 of 20; the pre-flight's embedding is not the catalog's and is left out
W         the catalog writer's ceiling: vectors/s committed in transactions of 16 (1280-d),
          SCALING's formula T = P / min(N·C·r_worker, W); the catalogs' rounds interleaved
          (the machine's load changes under a run), best of each, at two durabilities:
            commits not waiting for the disk: SQLite's WAL with synchronous=NORMAL (Graceful's
              setting) against PostgreSQL's synchronous_commit=off (the run's server setting)
            every commit on disk before it returns: SQLite synchronous=FULL against
              PostgreSQL synchronous_commit=on (PostgreSQL's default), a database of its own
              grown to the first size only
PostgreSQL 15 is started for the run by tests/pg_server.py (a Unix socket in a temporary
folder, fsync on) and stopped after.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bench.common import ROOT, percentiles, write_json

DIM, BATCH = 1280, 16


def unit_rows(rng, n: int, centres: np.ndarray) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.standard_normal((n, DIM),
                                                                                dtype=np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def stub_model(name: str):
    """What GalleryCore.activate reads from an embedder."""
    info = SimpleNamespace(kind="bench", as_dict=lambda: {"name": name, "space": "bench",
                                                          "dim": DIM, "kind": "bench"})
    return SimpleNamespace(name=name, space="bench", info=info)


def ingest(g, start: int, stop: int, rng, centres) -> float:
    cat, t0 = g.catalog, time.perf_counter()
    for s in range(start, stop, BATCH):
        n = min(BATCH, stop - s)
        with cat.transaction():
            ids = [cat.images.add_image({"sha256": f"{i:064x}", "name": f"p{i}.jpg", "ext": ".jpg",
                                         "bytes": 1, "width": 1, "height": 1, "format": "JPEG",
                                         "source": f"/photos/a{i % 50}/p{i}.jpg", "added_at": float(i),
                                         "album": f"a{i % 50}"}) for i in range(s, s + n)]
            cat.vectors.put_vectors(ids, unit_rows(rng, n, centres), "m0", "bench")
    return (stop - start) / (time.perf_counter() - t0)


def measure(g, queries: np.ndarray, repeat: int) -> dict:
    cat = g.catalog
    idx = g.index("bench")
    _, ids = idx.search(queries[:repeat], 10)
    share, whole = [], []
    for i in range(repeat):
        t = time.perf_counter()
        cat.vectors.space_version("bench")
        cat.images.hit_rows({int(x) for x in ids[i]}, "bench")
        share.append(time.perf_counter() - t)
        t = time.perf_counter()
        g.search_vectors(queries[i:i + 1], 10, "m0", "bench")
        whole.append(time.perf_counter() - t)
    return {"catalog_share": percentiles(share), "search": percentiles(whole)}


def first_search(g_open, queries) -> float:
    g = g_open()
    try:
        t = time.perf_counter()
        g.search_vectors(queries[:1], 10, "m0", "bench")
        return round(time.perf_counter() - t, 3)
    finally:
        g.close()


def upgrade_ms(g, times: int = 20) -> dict:
    models = [stub_model("m1"), stub_model("m0")]
    out = []
    for i in range(times):
        t = time.perf_counter()
        g.activate(models[i % 2], "upgrade")
        out.append(time.perf_counter() - t)
    return percentiles(out)


def writer_round(g, ids: list[int], v: np.ndarray) -> float:
    """One round: these vectors rewritten, 16 a transaction; vectors/s."""
    t0 = time.perf_counter()
    for s in range(0, len(ids), BATCH):
        with g.catalog.transaction():
            g.catalog.vectors.put_vectors(ids[s:s + BATCH], v[s:s + BATCH], "writer-bench", "bench")
    return round(len(ids) / (time.perf_counter() - t0), 1)


def writer(galleries: dict, batches: int = 200, rounds: int = 5) -> dict:
    """W of each (name: (gallery, before-round setup)), rounds interleaved; the best of
    `rounds` (a ceiling; the machine is shared), and every round."""
    v = np.random.default_rng(1).standard_normal((BATCH * batches, DIM), dtype=np.float32)
    ids = {name: g.catalog.vectors.space_members("bench")[: BATCH * batches].tolist()
           for name, (g, _) in galleries.items()}
    rates: dict = {name: [] for name in galleries}
    for _ in range(rounds):
        for name, (g, setup) in galleries.items():
            setup()
            rates[name].append(writer_round(g, ids[name], v))
    return {name: {"vectors_per_s": max(r), "rounds": r} for name, r in rates.items()}


def run_catalog(name: str, location: str | None, sizes: list[int], repeat: int,
                root: Path) -> dict:
    from search.core import GalleryCore
    from search.settings import Settings

    settings = replace(Settings.from_env(), catalog=location, threads=1)

    def open_gallery(home: str):
        return GalleryCore.open(root / name / home, settings=settings)

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((500, DIM), dtype=np.float32)
    queries = unit_rows(np.random.default_rng(7), repeat, centres)
    g = open_gallery("writer")
    g.activate(stub_model("m0"), "init")
    out: dict = {"catalog": name, "sizes": {}}
    have = 0
    for size in sizes:
        rate = ingest(g, have, size, rng, centres)
        have = size
        row = {"ingest_photos_per_s": round(rate, 1), **measure(g, queries, repeat),
               "first_search_s": first_search(lambda s=size: open_gallery(f"reader-{s}"), queries),
               "upgrade_switch": upgrade_ms(g)}
        out["sizes"][size] = row
        print(name, size, row, flush=True)
    return out, g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--json")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    sys.path.insert(0, str(ROOT / "tests"))
    from pg_server import running

    from search.runtime import configure_threads
    from search.storage.catalog.pgconn import release

    configure_threads(1)
    root = Path(tempfile.mkdtemp(prefix="graceful-bench-catalog-"))
    results: dict = {"sizes": sizes, "dim": DIM, "batch": BATCH, "runs": [],
                     "load_average_before": Path("/proc/loadavg").read_text().split()[:3]}
    opened = []
    try:
        run, sq = run_catalog("sqlite", str(root / "sqlite" / "catalog.db"), sizes, args.repeat,
                              root)
        results["runs"].append(run)
        opened.append(sq)
        with running(durable=True) as server:
            url = server.new_database("bench")
            run, pg = run_catalog("postgresql", url, sizes, args.repeat, root)
            results["runs"].append(run)
            opened.append(pg)
            url2 = server.new_database("benchsync")
            server.psql(f"ALTER DATABASE {server.name_of(url2)} SET synchronous_commit = on")
            _, pgsync = run_catalog("postgresql-sync-commit", url2, sizes[:1], 20, root)
            opened.append(pgsync)
            pragma = sq.catalog.conn.db.execute
            w = writer({"sqlite": (sq, lambda: pragma("PRAGMA synchronous=NORMAL")),
                        "postgresql": (pg, lambda: None),
                        "sqlite-synchronous-full": (sq, lambda: pragma("PRAGMA synchronous=FULL")),
                        "postgresql-synchronous-commit-on": (pgsync, lambda: None)})
            pragma("PRAGMA synchronous=NORMAL")
            results["writer_vectors_per_s"] = w
            for g in opened[1:]:
                g.close()
            release(url)
            release(url2)
        results["load_average_after"] = Path("/proc/loadavg").read_text().split()[:3]
    finally:
        if opened:
            opened[0].close()
        shutil.rmtree(root, ignore_errors=True)
    s, p = results["runs"][0], results["runs"][1]
    big = max(sizes)
    results["summary"] = {
        "search_p50_ratio_pg_over_sqlite": round(
            p["sizes"][big]["search"]["p50_ms"] / s["sizes"][big]["search"]["p50_ms"], 3),
        "catalog_share_p50_ratio": round(p["sizes"][big]["catalog_share"]["p50_ms"]
                                         / s["sizes"][big]["catalog_share"]["p50_ms"], 3),
        **{f"W_{name}": r["vectors_per_s"] for name, r in w.items()},
        "W_ratio_pg_over_sqlite": round(w["postgresql"]["vectors_per_s"]
                                        / w["sqlite"]["vectors_per_s"], 3),
        "W_ratio_on_disk_commits": round(w["postgresql-synchronous-commit-on"]["vectors_per_s"]
                                         / w["sqlite-synchronous-full"]["vectors_per_s"], 3)}
    print(results["summary"], flush=True)
    write_json(args.json, results)


if __name__ == "__main__":
    main()
