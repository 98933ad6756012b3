"""Gallery-core benchmark: ingest vs pure forward speed, query latency vs raw FAISS, memory.

    python -m bench.core --images 800 --sizes 10000,100000,1000000 --repeat 100 --json bench/out/core.json
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import (
    caltech_files,
    machine,
    peak_rss_mib,
    percentiles,
    rss_mib,
    synthetic_vectors,
    timed,
    write_json,
)
from search.runtime import configure_threads


def forward_vs_ingest(n_images: int, model_name: str, batch: int) -> dict:

    from models import registry
    from models.imageio import decode

    from search.api import Gallery
    from search.ops.ingest import ingest

    files = caltech_files("train", n_images)
    model = registry.load(model_name)
    tensors = [model.preprocess(decode(f.read_bytes(), model.info.image_size).image) for f in files]
    model.embed_batch(model.collate(tensors[:batch]))  # warm-up
    t = time.perf_counter()
    for i in range(0, len(tensors), batch):
        model.embed_batch(model.collate(tensors[i:i + batch]))
    forward = len(tensors) / (time.perf_counter() - t)
    del tensors

    home = Path(tempfile.mkdtemp(prefix="graceful-bench-"))
    rss_samples: list[tuple[int, float]] = []

    def sample(p):
        if p.done % 100 == 0:
            rss_samples.append((p.done, rss_mib()))

    try:
        g = Gallery.open(home, create=True)
        rss_before = rss_mib()
        report = ingest(g.core, files, model_name, batch_size=batch, on_progress=sample)
        _, real_vectors = g.core.catalog.vectors.vectors_by_model(model_name)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    xs = np.array([s[0] for s in rss_samples], float)
    ys = np.array([s[1] for s in rss_samples], float)
    half = len(ys) // 2
    slope = float(np.polyfit(xs[half:], ys[half:], 1)[0] * 1000) if len(ys) >= 4 else float("nan")
    return real_vectors, {
        "model": model_name, "images": len(files), "batch": batch,
        "forward_images_per_s": round(forward, 2),
        "ingest_images_per_s": round(report.images_per_second, 2),
        "ingest_over_forward": round(report.images_per_second / forward, 3),
        "rss_before_ingest_mib": round(rss_before, 1),
        "rss_during_ingest_mib": [(int(a), round(b, 1)) for a, b in rss_samples],
        "rss_growth_mib_per_1000_images_second_half": round(slope, 2),
    }


def query_latency(size: int, repeat: int, embed_ms: float, centers: np.ndarray,
                  kinds: tuple[str, ...]) -> dict:
    from search.api import Gallery
    from search.storage.faiss_index import SpaceIndex, train_ivf

    dim = centers.shape[1]
    rng = np.random.default_rng(size)
    home = Path(tempfile.mkdtemp(prefix="graceful-bench-q-"))
    out: dict = {"vectors": size, "dim": dim}
    try:
        g = Gallery.open(home, create=True)
        with g.core.catalog.transaction():
            g.core.catalog.conn.db.conn.executemany(
                "INSERT INTO images (id, sha256, name, ext, bytes, width, height, format, source,"
                " added_at) VALUES (?, ?, ?, '.jpg', 0, 0, 0, 'JPEG', '', 0)",
                ((i, f"{i:064x}", f"img{i}.jpg") for i in range(size)),
            )
            g.core.catalog.conn.db.execute("INSERT INTO spaces (space, dim, version) VALUES ('synthetic', ?, 1)", [dim])
        queries = synthetic_vectors(centers, repeat, rng)
        exact_ids = None
        for kind in kinds:
            rss0 = rss_mib()
            t0 = time.perf_counter()
            if kind == "ivf":
                sample = synthetic_vectors(centers, min(size, 200_000), np.random.default_rng(1))
                idx = SpaceIndex("synthetic", dim, train_ivf(sample), version=1, kind="ivf")
                del sample
            else:
                idx = SpaceIndex("synthetic", dim, version=1)
            gen = np.random.default_rng(size + 1)  # the same vectors for every kind
            for start in range(0, size, 50_000):
                x = synthetic_vectors(centers, min(50_000, size - start), gen)
                idx.index.add_with_ids(x, np.arange(start, start + len(x), dtype=np.int64))
            build_s = time.perf_counter() - t0
            g.core._indexes["synthetic"] = idx
            raw = idx.index
            it = iter(range(10**9))
            raw_t = timed(lambda raw=raw, it=it: raw.search(queries[next(it) % repeat][None], 10), repeat)
            it2 = iter(range(10**9))
            ours_t = timed(lambda it2=it2: g.core.search_vectors(queries[next(it2) % repeat][None], 10, "bench",
                                                    "synthetic"), repeat)
            _, ids = raw.search(queries, 10)
            if exact_ids is None:
                exact_ids = ids
            raw_p, ours_p = percentiles(raw_t), percentiles(ours_t)
            out[kind] = {
                "raw_faiss": raw_p, "graceful_search": ours_p,
                "search_over_raw_p50": round(ours_p["p50_ms"] / raw_p["p50_ms"], 3),
                "query_p50_ms_incl_embed": round(embed_ms + ours_p["p50_ms"], 2),
                "recall_at_10_vs_flat": round(float(np.mean(
                    [len(set(a) & set(b)) / 10 for a, b in zip(ids, exact_ids)])), 4),
                "build_s": round(build_s, 1),
                "serving_rss_mib": round(rss_mib() - rss0, 1),
            }
            print(size, kind, out[kind], flush=True)
            g.core._indexes.clear()
            idx = raw = None  # free this kind before building the next
        return out
    finally:
        shutil.rmtree(home, ignore_errors=True)


def single_image_embed_ms(model_name: str, repeat: int = 30) -> dict:
    from models import registry
    from models.imageio import decode

    model = registry.load(model_name)
    data = caltech_files("test", 1)[0].read_bytes()
    img = decode(data, model.info.image_size).image
    model.embed_images([img])
    fwd = percentiles(timed(lambda: model.embed_images([img]), repeat))
    full = percentiles(timed(lambda: model.embed_images([decode(data, model.info.image_size).image]), repeat))
    return {"forward_batch1": fwd, "decode_and_forward": full}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=800)
    ap.add_argument("--model", default="lite0")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kinds", default="flat,ivf", help="index kinds to time (flat first)")
    ap.add_argument("--json")
    args = ap.parse_args()
    configure_threads(args.threads)
    out = {"machine": machine(), "command": " ".join(sys.argv)}
    centers, out["ingest"] = forward_vs_ingest(args.images, args.model, args.batch)
    out["peak_rss_after_ingest_mib"] = round(peak_rss_mib(), 1)
    out["embed_one_image"] = single_image_embed_ms(args.model)
    embed_ms = out["embed_one_image"]["decode_and_forward"]["p50_ms"]
    kinds = tuple(args.kinds.split(","))
    out["query"] = [query_latency(int(s), args.repeat, embed_ms, centers, kinds)
                    for s in args.sizes.split(",")]
    out["peak_rss_mib"] = round(peak_rss_mib(), 1)
    write_json(args.json, out)


if __name__ == "__main__":
    main()
