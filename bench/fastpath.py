"""CPU fast path: torch eager (channels_last, what `embed_batch` ran before) vs ONNX Runtime.

    python -m bench.fastpath --models lite0 lite2 --batches 1 16 --seconds 10 [--ingest 160]

Both runtimes embed the same real photos in interleaved rounds (torch, ort, torch, ort, ...) so
machine noise hits both; `--seconds` is each runtime's measuring time per model and batch size.
Cosines compare the two runtimes' vectors for the same photos. `--ingest N` also indexes N
photos into a fresh gallery with each runtime (batch 16, the real loader overlap included).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import caltech_files, machine, write_json
from search.runtime import configure_threads


def compare(name: str, batch: int, seconds: float, files: list[Path], rounds: int = 10) -> dict:

    from models.efficientnet import EfficientNetLite
    from models.imageio import decode

    fast = EfficientNetLite(name, runtime="onnxruntime")
    slow = EfficientNetLite(name, runtime="torch")
    if fast.runtime != "onnxruntime":
        return {"model": name, "batch": batch, "error": "onnxruntime path unavailable"}
    size = fast.info.image_size
    tensors = [fast.preprocess(decode(f.read_bytes(), size).image) for f in files]
    batches = [fast.collate(tensors[i:i + batch]) for i in range(0, len(tensors) - batch + 1, batch)]
    ref = np.concatenate([slow.embed_batch(b) for b in batches])
    got = np.concatenate([fast.embed_batch(b) for b in batches])  # also the warm-up
    cos = (ref * got).sum(1)
    images = {"torch": 0, "ort": 0}
    spent = {"torch": 0.0, "ort": 0.0}
    per_round = {"torch": [], "ort": []}
    slice_s = seconds / rounds
    for r in range(rounds):
        order = [("torch", slow), ("ort", fast)] if r % 2 == 0 else [("ort", fast), ("torch", slow)]
        for key, model in order:
            n, t0 = 0, time.perf_counter()
            while True:
                model.embed_batch(batches[n % len(batches)])
                n += 1
                dt = time.perf_counter() - t0
                if dt >= slice_s:
                    break
            images[key] += n * batch
            spent[key] += dt
            per_round[key].append(n * batch / dt)
    torch_rate, ort_rate = images["torch"] / spent["torch"], images["ort"] / spent["ort"]
    ratios = np.array(per_round["ort"]) / np.array(per_round["torch"])
    return {"model": name, "batch": batch, "torch_img_s": round(torch_rate, 1),
            "ort_img_s": round(ort_rate, 1), "ratio": round(ort_rate / torch_rate, 2),
            "ratio_per_round_min_median_max": [round(float(np.min(ratios)), 2),
                                               round(float(np.median(ratios)), 2),
                                               round(float(np.max(ratios)), 2)],
            "photos_compared": len(cos), "min_cosine": round(float(cos.min()), 7),
            "max_cosine": round(float(cos.max()), 7), "measured_s_each": round(spent["ort"], 1)}


def ingest_rates(name: str, n_images: int) -> dict:
    """Real ingest (loader thread decoding while the main thread embeds) with each runtime."""
    from models import registry

    from search.api import Gallery
    from search.ops.ingest import ingest

    files = caltech_files("train", n_images)
    model = registry.load(name)
    out: dict = {"model": name, "images": len(files), "batch": 16}
    for runtime in ("torch", "onnxruntime", "torch", "onnxruntime"):  # twice each, interleaved
        chosen = model.use_runtime(runtime)
        home = Path(tempfile.mkdtemp(prefix="graceful-bench-fastpath-"))
        try:
            report = ingest(Gallery.open(home, create=True).core, files, name, batch_size=16)
            out.setdefault(f"{chosen}_img_s", []).append(round(report.images_per_second, 1))
        finally:
            shutil.rmtree(home, ignore_errors=True)
    model.use_runtime(None)
    best = {k: max(v) for k, v in out.items() if k.endswith("_img_s")}
    if len(best) == 2:
        out["ratio_best_of_two"] = round(best["onnxruntime_img_s"] / best["torch_img_s"], 2)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["lite0", "lite2"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--photos", type=int, default=64, help="real photos cycled through")
    ap.add_argument("--ingest", type=int, default=160, help="photos per ingest run (0: skip)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    threads = configure_threads(args.threads)  # torch, faiss; ORT sessions take torch's count
    import onnxruntime

    files = caltech_files("test", args.photos)
    out = {"machine": {**machine(), "onnxruntime": onnxruntime.__version__, "threads": threads},
           "seconds_each": args.seconds, "loadavg_before": os.getloadavg(), "results": []}
    for name in args.models:
        for batch in args.batches:
            out["results"].append(compare(name, batch, args.seconds, files))
            print(out["results"][-1], flush=True)
    if args.ingest:
        out["ingest"] = []
        for name in args.models:
            try:
                out["ingest"].append(ingest_rates(name, args.ingest))
            except Exception as e:  # the engine is optional here; the forward numbers stand
                out["ingest"].append({"model": name, "error": f"{type(e).__name__}: {e}"})
            print(out["ingest"][-1], flush=True)
    out["loadavg_after"] = os.getloadavg()  # other processes on the machine skew both runtimes
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
