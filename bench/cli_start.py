"""How long `graceful --help`, `graceful info` and `graceful models` take to start (issue 12):
median of 5 fresh processes each, on a gallery of 10,000 synthetic 1280-d vectors; with
--before REV, the same for that revision (checked out in a temporary worktree) first.

    python -m bench.cli_start --before f4137be --json bench/out/cli_start.json
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, write_json

COMMANDS = {"--help": ["--help"], "info": ["info"], "models": ["models"]}


def build_gallery(code_root: Path, home: Path, n: int) -> None:
    """n images with random unit vectors, written through that revision's own Catalog."""
    script = f"""
import sys, numpy as np
sys.path.insert(0, {str(code_root)!r})
from search.storage.catalog import Catalog, Db
path = __import__('pathlib').Path({str(home / 'catalog.db')!r})
if hasattr(Catalog, 'add_image'):  # a revision before the catalog's repositories (issue 26)
    c = images = vectors = models = state = Catalog(path)
else:
    c = Catalog(Db(path))
    images, vectors, models, state = c.images, c.vectors, c.models, c.state
rng = np.random.default_rng(0)
v = rng.normal(size=({n}, 1280)).astype(np.float32); v /= np.linalg.norm(v, axis=1, keepdims=True)
with c.transaction():
    ids = [images.add_image({{'sha256': f'{{i:064x}}', 'name': f'p{{i}}.jpg', 'ext': '.jpg', 'bytes': 1,
                             'width': 1, 'height': 1, 'format': 'JPEG', 'source': f'/p/a{{i % 20}}/p{{i}}.jpg',
                             'added_at': float(i)}}) for i in range({n})]
    vectors.put_vectors(ids, v, 'lite0', 'lite0')
models.register_model({{'name': 'lite0', 'space': 'lite0', 'dim': 1280, 'kind': 'efficientnet'}}, 'efficientnet')
state.set_state('active_model', 'lite0')
"""
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=code_root)


def measure(code_root: Path, home: Path, repeat: int) -> dict:
    env = {**os.environ, "GRACEFUL_HOME": str(home), "PYTHONPATH": str(code_root)}
    out = {}
    for name, args in COMMANDS.items():
        subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=code_root, env=env,
                       capture_output=True, check=True)  # warm the file cache (and any migration)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=code_root, env=env,
                           capture_output=True, check=True)
            times.append(time.perf_counter() - t0)
        out[name] = {"median_s": round(statistics.median(times), 3),
                     "all_s": [round(t, 3) for t in times]}
        print(code_root.name, name, out[name], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", help="a git revision to measure first (e.g. the previous landing)")
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="graceful-cli-start-"))
    result: dict = {"images": args.images, "repeat": args.repeat}
    try:
        home = work / "home"
        if args.before:
            tree = work / "before"
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.before],
                           cwd=ROOT, check=True, capture_output=True)
            try:
                build_gallery(tree, home, args.images)
                result["before"] = {"revision": args.before, **measure(tree, home, args.repeat)}
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT)
        else:
            build_gallery(ROOT, home, args.images)
        result["after"] = measure(ROOT, home, args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_json(args.json, result)


if __name__ == "__main__":
    main()
