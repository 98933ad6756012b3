"""Lean serving: 1M vectors in a compressed index, float16 catalog vectors (section 11).

    python -m bench.lean --size 1000000 --kinds pq,sq8 --json bench/out/lean.json

One gallery whose catalog holds `size` lite0-space vectors: the 9,145 real Caltech-101 lite0
embeddings (train, test, distractors) plus photo-like synthetic ones (real embeddings + noise,
as in section 1) up to the size. Per kind: build time (from the catalog, as `graceful reindex
--kind` does), then a *fresh process* loads the saved index and serves 200 queries through
Gallery.search_vectors (compressed codes, short list re-ranked from the catalog): p50/p95 and
that process's whole RSS. Recall@10 against exact search over all vectors, for synthetic
queries and for real Caltech queries. Catalog bytes per stored vector. And float16 vs float32
storage on every retrieval figure: Caltech test leave-one-out top-1 / mAP for lite0/lite0 and
lite2-compat-lite0/lite0.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import CALTECH, machine, synthetic_vectors, write_json
from search.runtime import configure_threads

SERVE = r"""
import json, sys, time
import numpy as np
from search.runtime import configure_threads
configure_threads(2)
from search.api import Gallery
home, kind, qpath = sys.argv[1:4]
queries = np.load(qpath)
g = Gallery.open(home)
t0 = time.perf_counter()
idx = g.core.index("lite0")
open_s = time.perf_counter() - t0
assert idx.kind == kind, (idx.kind, kind)
found, times = [], []
for q in queries:
    t = time.perf_counter()
    r = g.core.search_vectors(q[None], 10, "bench", "lite0")[0]
    times.append(time.perf_counter() - t)
    found.append([h.image_id for h in r.hits])
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
ms = np.array(times[20:]) * 1000
print(json.dumps({"open_s": round(open_s, 2), "p50_ms": round(float(np.percentile(ms, 50)), 3),
                  "p95_ms": round(float(np.percentile(ms, 95)), 3), "rss_mib": round(rss, 1),
                  "peak_rss_mib": round(hwm, 1), "found": found}))
"""


def real_lite0() -> tuple[list[Path], np.ndarray]:
    """lite0 embeddings of every Caltech photo (the feature cache makes reruns cheap)."""
    from models import registry
    from models.features import extract

    files = (sorted(CALTECH.glob("train/*/*.jpg")) + sorted(CALTECH.glob("test/*/*.jpg"))
             + sorted(CALTECH.glob("distractors/*.jpg")))
    x = extract(registry.load("lite0"), files, Path(tempfile.gettempdir()) / "gb" / "cache",
                progress=False)
    return files, (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def build_catalog(home: Path, real: np.ndarray, size: int) -> tuple[float, float, float | None]:
    from search.api import Gallery

    g = Gallery.open(home, create=True, store="faiss")
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    with g.core.catalog.transaction():
        g.core.catalog.conn.db.conn.executemany(
            "INSERT INTO images (id, sha256, name, ext, bytes, width, height, format, source,"
            " added_at) VALUES (?, ?, ?, '.jpg', 0, 0, 0, 'JPEG', 'synthetic', 0)",
            ((i, f"{i:064x}", f"img{i}.jpg") for i in range(1, size + 1)))
        g.core.catalog.state.set_state("active_model", "lite0")
    for start in range(1, size + 1, 50_000):
        n = min(50_000, size + 1 - start)
        if start == 1:
            x = np.concatenate([real, synthetic_vectors(real, n - len(real), rng)])
        else:
            x = synthetic_vectors(real, n, rng)
        with g.core.catalog.transaction():
            g.core.catalog.vectors.put_vectors(list(range(start, start + n)), x, "lite0", "lite0")
    seconds = time.perf_counter() - t0
    g.close()
    db = home / "catalog.db"
    import sqlite3

    with sqlite3.connect(db) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        try:  # the vectors table and its indexes alone (SQLite's dbstat, when compiled in)
            vector_bytes = c.execute(
                "SELECT sum(pgsize) FROM dbstat WHERE name = 'vectors' OR name LIKE 'idx_vectors%' "
                "OR name = 'sqlite_autoindex_vectors_1'").fetchone()[0]
        except sqlite3.OperationalError:
            vector_bytes = None
    return seconds, db.stat().st_size / size, (vector_bytes / size if vector_bytes else None)


def exact_top10(home: Path, queries: np.ndarray) -> np.ndarray:
    """Brute force over every stored vector, in chunks (the ground truth)."""
    from search.storage.catalog import Catalog, Db

    cat = Catalog(Db(home / "catalog.db"))
    best_s = np.full((len(queries), 10), -np.inf, np.float32)
    best_i = np.full((len(queries), 10), -1, np.int64)
    for ids, vectors in cat.vectors.serving_vectors("lite0", batch=50_000):
        s = queries @ vectors.T
        top = np.argpartition(-s, 10, axis=1)[:, :10]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], 1)
        cand_i = np.concatenate([best_i, ids[top]], 1)
        order = np.argsort(-cand_s, axis=1)[:, :10]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    cat.close()
    return best_i


def recall(found: list[list[int]], exact: np.ndarray) -> float:
    return round(float(np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])), 4)


def kind_section(home: Path, kind: str, queries: dict[str, np.ndarray],
                 truth: dict[str, np.ndarray]) -> dict:
    from search.api import Gallery

    g = Gallery.open(home)
    t0 = time.perf_counter()
    built = g.core.rebuild_index("lite0", kind)
    build_s = time.perf_counter() - t0
    g.close()
    out: dict = {"kind": built, "build_s": round(build_s, 1),
                 "index_file_mib": round((home / "index" / "lite0.faiss").stat().st_size / 2**20, 1)}
    for name, q in queries.items():
        qpath = home / f"queries-{name}.npy"
        np.save(qpath, q)
        r = subprocess.run([sys.executable, "-c", SERVE, str(home), built, str(qpath)],
                           capture_output=True, text=True, check=True)
        served = json.loads(r.stdout.strip().splitlines()[-1])
        out[name] = {k: v for k, v in served.items() if k != "found"}
        out[name]["recall_at_10"] = recall(served["found"], truth[name])
    print(kind, out, flush=True)
    return out


def float16_effect(files: list[Path], real: np.ndarray) -> dict:
    """Caltech test split, leave-one-out: float32 vs float16-stored gallery vectors."""
    from models import registry
    from models.features import extract
    from models.metrics import label_retrieval

    from search.storage.catalog import as_stored

    test = [i for i, f in enumerate(files) if f.parent.parent.name == "test"]
    labels = [files[i].parent.name for i in test]
    old = real[test]
    new_model = registry.load("lite2-compat-lite0")
    feats = extract(registry.load("lite2"), [files[i] for i in test],
                    Path(tempfile.gettempdir()) / "gb" / "cache", progress=False)
    new = new_model.project(np.asarray(feats, np.float32))
    own = np.arange(len(test))
    out = {}
    for name, q in (("lite0/lite0", old), ("lite2-compat-lite0/lite0", new)):
        for storage, gallery in (("float32", old), ("float16", as_stored(old))):
            top1, ap = label_retrieval(q, gallery, labels, labels, own)
            out.setdefault(name, {})[storage] = {"top1": round(float(top1.mean()), 4),
                                                 "map": round(float(ap.mean()), 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--kinds", default="pq,sq8")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", help="keep the gallery here (reruns skip building the catalog)")
    ap.add_argument("--json")
    args = ap.parse_args()
    configure_threads(args.threads)
    out: dict = {"machine": machine(), "command": " ".join(sys.argv)}
    files, real = real_lite0()
    home = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="graceful-bench-lean-"))
    try:
        if not (home / "catalog.db").exists():
            seconds, per_vector, vector_rows = build_catalog(home, real, args.size)
            out["catalog"] = {"vectors": args.size, "write_s": round(seconds, 1),
                              "file_bytes_per_vector": round(per_vector, 1),
                              "file_kib_per_vector": round(per_vector / 1024, 3),
                              "vector_rows_kib_per_vector": round(vector_rows / 1024, 3)
                              if vector_rows else None}
            print(out["catalog"], flush=True)
        rng = np.random.default_rng(99)
        queries = {"synthetic": synthetic_vectors(real, args.queries, rng),
                   "caltech": real[rng.choice(len(real), args.queries, replace=False)]}
        t0 = time.perf_counter()
        truth = {k: exact_top10(home, q) for k, q in queries.items()}
        out["exact_search_s"] = round(time.perf_counter() - t0, 1)
        out["kinds"] = [kind_section(home, k, queries, truth) for k in args.kinds.split(",")]
        out["float16_vs_float32"] = float16_effect(files, real)
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    write_json(args.json, out)


if __name__ == "__main__":
    main()
