"""Moving the gallery too (issue 18): vector-only fits, gallery transforms and the upgrade plan.

The simulated foreign domain of section 8: the user's gallery is one half of the Caltech-101
classes' train photos (albums = class folders, or four classes to an album with --coarse) plus
the 468 distractors, as lite0 vectors (from the feature cache: the same vectors ingest stores);
that half's *test* photos are the queries, judged by class (never seen by any fit). Through the
engine: `train --from-gallery --backbone lite0` (vector-only) and `--backbone lite2`, each
fit's plan and recommendation, `upgrade --transform` (the gallery's vectors as the engine
writes them); query-side embeddings from cached features (what the models compute on the
photos, checked by tests/test_transform.py). Then timings at 100k synthetic photo-like vectors:
the transform, the vector-only fit, and an upgrade that reuses the fit's measurement.

    python -m bench.transform --cache /tmp/gb/cache --json bench/out/transform.json
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from bench.common import CALTECH, machine, synthetic_vectors, write_json


def score(q: np.ndarray, g: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray,
          base: dict | None = None) -> dict:
    """Top-1, top-5, mAP over the full ranking; NFR and lost@5 against `base` (old/old): the
    one evaluation (models/evaluation/score.py)."""
    from models.evaluation.score import Summary, search

    o = search(q, g, None, q_labels, g_labels)
    s = Summary(base["_o"] if base is not None else o, o)
    out = {**s.side("new", ("top1", "top5", "map")), "_o": o}
    if base is not None:
        out["nfr"] = round(float(s.nfr().mean()), 4)
        out["lost_at_5"] = round(float(s.lost(5).mean()), 4)
    return out


def public(d: dict) -> dict:
    return {k: v for k, v in d.items() if not k.startswith("_")}


def scenario(split: str, coarse: bool, cache: Path, work: Path) -> dict:
    from models.features import FeatureCache, file_shas

    from bench.gallery_fit import cached_gallery, halves
    from search.ops.fit import FitRequest, fit_upgrade
    from search.ops.upgrade import rollback, upgrade

    _, user = halves(split == "first")
    classes = sorted(user)
    files = sorted(f for c in user for f in (CALTECH / "train" / c).glob("*.jpg"))
    files += sorted((CALTECH / "distractors").glob("*.jpg"))
    queries = sorted(f for c in user for f in (CALTECH / "test" / c).glob("*.jpg"))
    label = np.array([f.parent.name for f in files])
    album = [c if (c == "distractors" or not coarse) else f"group-{classes.index(c) // 4}"
             for c in label]
    q_label = np.array([f.parent.name for f in queries])
    home = work / f"{split}-{'coarse' if coarse else 'fine'}"
    shutil.rmtree(home, ignore_errors=True)
    g = cached_gallery(home, files, album, cache)
    (home / "cache").mkdir(exist_ok=True)
    (home / "cache" / "lite2").symlink_to(cache / "lite2")  # lite2 features of this run's photos
    shas, q_shas = file_shas(files), file_shas(queries)
    ids = [g.core.catalog.images.image_id(s) for s in shas]
    c0, c2 = FeatureCache(cache, "lite0"), FeatureCache(cache, "lite2")
    stored = g.core.catalog.vectors.serving_vectors_of(ids, "lite0")
    g0 = np.stack([stored[i] for i in ids])
    q0, q2, g2 = c0.get(q_shas), c2.get(q_shas), c2.get(shas)
    q0, q2, g2 = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (q0, q2, g2))
    base = score(q0, g0, q_label, label)
    out: dict = {"split": split, "albums": "coarse (4 classes each)" if coarse else "class folders",
                 "gallery_photos": len(files), "queries": len(queries),
                 "old/old": public(base), "fits": {}}
    for backbone, name, feats_q, feats_g in (("lite0", "head", q0, g0), ("lite2", "fit2", q2, g2)):
        t0 = time.perf_counter()
        rep = fit_upgrade(g.core, FitRequest(backbone, name, force=True))
        wall = time.perf_counter() - t0
        model = g.core.load_model(name)
        new_q = model.project(feats_q)
        paths = {"queries": score(new_q, g0, q_label, label, base)}
        up = upgrade(g.core, name, transform=True, force=True)
        moved = g.core.catalog.vectors.serving_vectors_of(ids, name)
        paths["transform"] = score(new_q, np.stack([moved[i] for i in ids]), q_label, label, base)
        paths["backfill"] = score(new_q, model.project(feats_g),
                                  q_label, label, base)
        rollback(g.core)
        rec = rep["recommended"]
        out["fits"][backbone] = {
            "wall_s": round(wall, 2), "seconds": rep["seconds"], "photos_embedded": rep["photos_embedded"],
            "blend": (rep.get("blend") or {}).get("chosen"), "transform": rep["transform"],
            "held_out_plan": rep["plan"], "held_out_old": rep["measured"]["old"],
            "recommended": rec, "recommendation": rep["recommendation"],
            "on_queries": {p: public(v) for p, v in paths.items()},
            "transform_upgrade_s": up.seconds, "vectors_transformed": up.vectors_transformed,
        }
        print(split, "coarse" if coarse else "fine", backbone, rec,
              {p: (v["top1"], v["top5"], v["map"], v["nfr"], v["lost_at_5"]) for p, v in paths.items()},
              flush=True)
    q = out["fits"]["lite2"]["on_queries"]
    gap = q["backfill"]["map"] - q["queries"]["map"]
    out["lite2_transform_closes"] = round((q["transform"]["map"] - q["queries"]["map"]) / gap, 3) \
        if gap > 0 else None
    g.close()
    return out


def at_scale(n: int, cache: Path, work: Path, checkpoint: Path | None) -> dict:
    """Timings at n synthetic photo-like lite0 vectors in 50 albums (no photo files)."""
    from models import registry
    from models.features import FeatureCache

    from search.api import Gallery
    from search.ops.fit import FitRequest, fit_upgrade
    from search.ops.transform import transform_gallery
    from search.ops.upgrade import rollback, upgrade

    home = work / f"scale-{n}"
    shutil.rmtree(home, ignore_errors=True)
    from models.features import file_shas

    from bench.common import caltech_files

    centers = FeatureCache(cache, "lite0").get(file_shas(caltech_files("train", 2000)))
    centers = (centers / np.linalg.norm(centers, axis=1, keepdims=True)).astype(np.float32)
    rng = np.random.default_rng(0)
    x = synthetic_vectors(centers, n, rng, noise=0.03)
    albums = np.argmax(x @ centers[:50].T, axis=1)  # albums = nearest of 50 real photos
    g = Gallery.open(home, create=True)
    lite0 = registry.load("lite0")
    g.core.activate(lite0, "init")
    t0 = time.perf_counter()
    for s in range(0, n, 20000):
        with g.core.catalog.transaction():
            ids = [g.core.catalog.images.add_image({"sha256": f"{i:064x}", "name": f"p{i}.jpg", "ext": ".jpg",
                                        "bytes": 1, "width": 1, "height": 1, "format": "JPEG",
                                        "source": f"/p/a{albums[i]}/p{i}.jpg", "added_at": float(i),
                                        "album": f"a{albums[i]}"}) for i in range(s, min(n, s + 20000))]
            g.core.write_vectors(ids, x[s:s + 20000], lite0)
    g.core.rebuild_index()
    out: dict = {"photos": n, "build_s": round(time.perf_counter() - t0, 1)}
    t0 = time.perf_counter()
    rep = fit_upgrade(g.core, FitRequest("lite0", "head", force=True))
    out["vector_only_fit_s"] = round(time.perf_counter() - t0, 2)
    out["vector_only_fit"] = rep["seconds"]
    t0 = time.perf_counter()
    up = upgrade(g.core, "head")
    out["upgrade_reusing_fit_s"] = round(time.perf_counter() - t0, 3)
    out["upgrade_reused"] = bool(up.preflight.reused)
    rollback(g.core)
    model = g.core.load_model("head")
    t0 = time.perf_counter()
    state, switched = transform_gallery(g.core, model, model.gallery_transform())
    out["transform_head"] = {"seconds": round(time.perf_counter() - t0, 2), "vectors": state.done,
                             "per_second": round(state.done / (time.perf_counter() - t0), 1),
                             "switched": switched}
    rollback(g.core)
    if checkpoint is not None:  # a learned map (a lite2 fit's) moving the same vectors
        shutil.copy(checkpoint, g.core.models_dir / checkpoint.name)
        fit2 = g.core.load_model(checkpoint.stem)
        t0 = time.perf_counter()
        state, switched = transform_gallery(g.core, fit2, fit2.gallery_transform())
        out["transform_map"] = {"seconds": round(time.perf_counter() - t0, 2), "vectors": state.done,
                                "per_second": round(state.done / (time.perf_counter() - t0), 1)}
    g.close()
    shutil.rmtree(home, ignore_errors=True)
    return out


def lite2_feature_rate(work: Path, n: int = 300) -> float:
    """lite2 features per second here on photos it has not seen (nothing cached)."""
    from models import registry
    from models.features import extract

    from bench.common import caltech_files

    files = caltech_files("test", n)
    shutil.rmtree(work / "rate-cache", ignore_errors=True)
    model = registry.load("lite2")
    t0 = time.perf_counter()
    extract(model, files, work / "rate-cache", batch_size=16, shard_size=16, progress=False)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, default=Path("/tmp/gb/cache"),
                    help="feature cache with lite0 and lite2 features of all Caltech photos")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_transform"))
    ap.add_argument("--scale", type=int, default=100_000, help="photos for the timings (0: skip)")
    ap.add_argument("--json")
    args = ap.parse_args()

    from search.runtime import configure_threads

    configure_threads()
    out: dict = {"machine": machine(), "scenarios": []}
    for split in ("first", "second"):
        for coarse in (False, True):
            out["scenarios"].append(scenario(split, coarse, args.cache, args.work))
    # time to fit at 10,000 photos (1,500 sampled): lite2 pays its features, lite0 none
    rate = lite2_feature_rate(args.work)
    fits = [s["fits"] for s in out["scenarios"] if s["albums"] == "class folders"]
    lite2_fit = float(np.mean([1500 / rate + f["lite2"]["seconds"]["train"] + f["lite2"]["seconds"]["evaluate"]
                               for f in fits]))
    head_fit = float(np.mean([f["lite0"]["seconds"]["total"] for f in fits]))
    out["fit_time_at_10k"] = {"lite2_features_per_second": round(rate, 1),
                              "lite2_fit_s": round(lite2_fit, 1), "vector_only_fit_s": round(head_fit, 1),
                              "ratio": round(head_fit / lite2_fit, 3)}
    print(out["fit_time_at_10k"], flush=True)
    if args.scale:
        ckpt = args.work / "second-fine" / "models" / "fit2.safetensors"
        out["at_scale"] = at_scale(args.scale, args.cache, args.work, ckpt if ckpt.exists() else None)
        print(out["at_scale"], flush=True)
    write_json(args.json, out)


if __name__ == "__main__":
    main()
