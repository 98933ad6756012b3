"""Soak: ingest N generated photo-like JPEGs (varied sizes and qualities) into a new gallery with
the process's RSS sampled every few hundred photos (docs/BENCHMARKS.md section 16).

    python -m bench.soak --photos 2000 --every 200 --json bench/out/soak.json
    python -m bench.soak --photos 20000 --every 1000 --json bench/out/soak20k.json

Photos: smooth colour fields (a random 4x4 grid upscaled bicubically), shapes and sensor-like
noise (crops of three fixed noise fields), 240-1600 px on the long side,
aspect 1:2 to 2:1, JPEG quality 70-95, 500 per album folder.
Reports each sample (photos done, RSS MiB, seconds), the growth over the second half (the largest
RSS of the second half minus the RSS at its start), the peak (VmHWM) and the rate.
tests/test_soak.py runs it at 2,000 photos and bounds the growth.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import peak_rss_mib, rss_mib

_NOISE: list = []  # sensor-like noise fields, made once and cropped per photo


def photo(rng: np.random.Generator):
    from PIL import Image, ImageDraw

    if not _NOISE:
        _NOISE.extend(Image.merge("RGB", [Image.effect_noise((1600, 1600), sigma)] * 3)
                      for sigma in (6.0, 12.0, 24.0))
    long = int(rng.integers(240, 1601))
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    w, h = (long, max(32, int(long / aspect))) if aspect >= 1 else (max(32, int(long * aspect)), long)
    grid = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(grid, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 6))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(8, w // 2 + 9)), y0 + int(rng.integers(8, h // 2 + 9))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    noise = _NOISE[int(rng.integers(0, len(_NOISE)))]
    x, y = int(rng.integers(0, 1601 - w)), int(rng.integers(0, 1601 - h))
    img = Image.blend(img, noise.crop((x, y, x + w, y + h)), 0.15)
    return img, int(rng.integers(70, 96))


def generate(folder: Path, n: int, seed: int = 0) -> Path:
    """Photo i is the same for a given seed whatever n (files already there are kept)."""
    for i in range(n):
        album = folder / f"album{i // 500:03d}"
        album.mkdir(parents=True, exist_ok=True)
        path = album / f"p{i:06d}.jpg"
        if not path.exists():
            img, quality = photo(np.random.default_rng((seed, i)))
            img.save(path.with_suffix(".tmp"), "JPEG", quality=quality)
            path.with_suffix(".tmp").rename(path)
    return folder


def soak(photos: Path, home: Path, n: int, every: int) -> dict:
    from search.api import Gallery

    samples: list[dict] = []
    t0 = time.perf_counter()
    next_at = [every]

    def on_progress(p) -> None:
        if p.done >= next_at[0] or p.done == n:
            samples.append({"photos": int(p.done), "rss_mib": round(rss_mib(), 1),
                            "s": round(time.perf_counter() - t0, 1)})
            while next_at[0] <= p.done:
                next_at[0] += every

    g = Gallery.open(home, create=True)
    report = g.add([photos], progress=on_progress)
    g.close()
    seconds = time.perf_counter() - t0
    half = [s for s in samples if s["photos"] >= n / 2]
    return {"photos": n, "added": report.added, "skipped": len(report.skipped),
            "seconds": round(seconds, 1), "photos_per_s": round(n / seconds, 1),
            "rss_first_mib": samples[0]["rss_mib"] if samples else None,
            "rss_end_mib": round(rss_mib(), 1),
            "peak_mib": round(peak_rss_mib(), 1),
            "growth_second_half_mib": round(max(s["rss_mib"] for s in half) - half[0]["rss_mib"], 1)
            if half else None,
            "samples": samples}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=2000)
    ap.add_argument("--every", type=int, default=200)
    ap.add_argument("--photos-dir", type=Path, help="reuse (or keep) the generated photos here")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="graceful-soak-"))
    try:
        photos = args.photos_dir or work / "photos"
        t0 = time.perf_counter()
        generate(photos, args.photos)
        made = round(time.perf_counter() - t0, 1)
        out = soak(photos, work / "gallery", args.photos, args.every)
        out["generate_s"] = made
        text = json.dumps(out)
        print(text, flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(text)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
