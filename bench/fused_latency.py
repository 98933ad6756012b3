"""Fused search cost at 100k (issue 24): one index of concatenated [sqrt(w) old, sqrt(1-w) new]
vectors against a single space's index, FAISS flat and ivf (the product's own builders), p50 of
single-query searches (k = 10) and index memory; plus the query side (embedding by lite0 alone
vs lite0 and lite2 together, torch, one photo).

    python -m bench.fused_latency --n 100000 --json bench/out/fused_latency.json
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from bench.common import CALTECH, machine, percentiles, write_json


def clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // 50), d)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.8 * rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def index_of(kind: str, x: np.ndarray):
    import faiss

    from search.storage.faiss_index import train_ivf

    if kind == "flat":
        index = faiss.IndexFlatIP(x.shape[1])
    else:
        index = train_ivf(x)
    index.add(x)
    return index


def p50(index, queries: np.ndarray, repeat: int) -> dict:
    out = []
    for i in range(repeat):
        q = queries[i % len(queries)][None]
        t0 = time.perf_counter()
        index.search(q, 10)
        out.append(time.perf_counter() - t0)
    return percentiles(out)


def main() -> None:
    import faiss

    from models.bridge import fuse

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--json")
    args = ap.parse_args()
    faiss.omp_set_num_threads(2)
    old, new = clustered(args.n, 1280, 0), clustered(args.n, 1280, 1)
    fused = fuse(old, new, 0.5)
    queries_single = old[:50] + 0.01
    queries_fused = fused[:50] + 0.01
    result: dict = {"machine": machine(), "n": args.n, "index": {}}
    for kind in ("flat", "ivf"):
        single = index_of(kind, old)
        both = index_of(kind, fused)
        s, f = p50(single, queries_single, args.repeat), p50(both, queries_fused, args.repeat)
        result["index"][kind] = {"single": s, "fused": f, "ratio_p50": round(f["p50_ms"] / s["p50_ms"], 2),
                                 "single_bytes": int(args.n * 1280 * 4),
                                 "fused_bytes": int(args.n * 2560 * 4)}
        print(f"{kind}: single-space p50 {s['p50_ms']:.2f} ms, fused p50 {f['p50_ms']:.2f} ms "
              f"(x{result['index'][kind]['ratio_p50']}); memory {args.n * 1280 * 4 / 2**20:.0f} MiB "
              f"-> {args.n * 2560 * 4 / 2**20:.0f} MiB")
        del single, both
    # the query side: one photo embedded by lite0 alone, and by lite0 + lite2 (fused)
    from PIL import Image

    from models import registry

    photo = next((CALTECH / "test" / "airplanes").iterdir())
    image = Image.open(photo).convert("RGB")
    lite0, lite2 = registry.load("lite0"), registry.load("lite2")
    for m in (lite0, lite2):
        m.embed_images([image])  # warm up
    t_single = [0.0] * 20
    t_both = [0.0] * 20
    for i in range(20):
        t0 = time.perf_counter()
        lite0.embed_images([image])
        t_single[i] = time.perf_counter() - t0
        t0 = time.perf_counter()
        lite0.embed_images([image])
        lite2.embed_images([image])
        t_both[i] = time.perf_counter() - t0
    result["embed"] = {"lite0": percentiles(t_single), "lite0+lite2": percentiles(t_both),
                       "runtime": lite0.runtime}
    print(f"query embedding ({lite0.runtime}): lite0 p50 {result['embed']['lite0']['p50_ms']:.1f} ms, "
          f"lite0 + lite2 p50 {result['embed']['lite0+lite2']['p50_ms']:.1f} ms")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
