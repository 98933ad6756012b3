"""The first read after a killed `reindex --kind pq` (docs/BENCHMARKS.md section 16).

    python -m bench.kill_reads --vectors 100000 --kills missing,flat,damaged

A gallery of N synthetic photo-like vectors (1280-d, lite0 active, no photo files) with a saved
flat index; then the index kind is set to pq in the catalog and the index folder is left as each
kill leaves it: `missing` (the files gone), `flat` (the old flat index: killed before the save),
`damaged` (a new file beside the old sidecar: killed between the renames). Each `graceful info
--json` runs as a fresh CLI process (start-up included) and is timed, up to --timeout seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT


def build(home: Path, n: int) -> None:
    from bench.scaling import fill_catalog

    centers = np.random.default_rng(0).standard_normal((300, 1280)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    g = fill_catalog(home, n, centers)
    with g.core.catalog.transaction():
        g.core.catalog.models.register_model({"name": "lite0", "dim": 1280, "space": "lite0",
                                  "kind": "builtin"}, "builtin")
        g.core.catalog.models.set_active_model("lite0")
    g.core.rebuild_index("lite0", "flat")
    g.close()


def info(home: Path, timeout: float) -> dict:
    env = {**os.environ, "GRACEFUL_HOME": str(home), "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "search.cli", "info", "--json"], env=env,
                           capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"seconds": None, "note": f"still running after {timeout:g} s (stopped)"}
    out = {"seconds": round(time.perf_counter() - t0, 1), "note": r.stderr.strip()[:300]}
    if r.returncode == 0:
        out["index_kind"] = json.loads(r.stdout)["index_kind"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--kills", default="missing,flat,damaged")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="graceful-kill-reads-"))
    try:
        home = work / "gallery"
        build(home, args.vectors)
        index = home / "index"
        keep = {p.name: p.read_bytes() for p in index.glob("lite0.*")}
        from search.storage.catalog import Catalog, Db

        catalog = Catalog(Db(home / "catalog.db"))
        catalog.state.set_index_kind("pq")  # what `reindex --kind pq` records before it builds
        catalog.close()
        for kill in args.kills.split(","):
            for name, data in keep.items():
                (index / name).write_bytes(data)
            if kill == "missing":
                for p in index.glob("lite0.*"):
                    p.unlink()
            elif kill == "damaged":
                with open(index / "lite0.faiss", "r+b") as f:
                    f.seek(1 << 20)
                    f.write(os.urandom(4096))
            print(json.dumps({"kill": kill, "vectors": args.vectors, **info(home, args.timeout)}),
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
