"""A bounded soak (issue 25): ingest 120 generated photo-like JPEGs of varied sizes into a new
gallery with RSS sampled every 12 photos (`python -m bench.soak`, run as a script: nothing
imports bench/). Memory must be flat: the growth over the second half stays under 75 MiB.
(Since ingest serves lite0 from ONNX Runtime without torch, glibc's heap fragmentation that
`bound_malloc` fixes no longer shows here even without the fix: 5.0 MiB at 500 photos, 7.6 at
1,000, measured 2026-12-03; under torch it grew 308-528 MiB over 1,000.)
(`python -m bench.soak --photos 20000 --every 1000` is the long run, docs/BENCHMARKS.md
section 16.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
GROWTH_BOUND_MIB = 75  # measured 2.2 MiB at 500 photos (2026-12-03)


def test_ingest_of_120_photos_keeps_memory_flat(tmp_path):
    out = tmp_path / "soak.json"
    env = {**os.environ}
    done = subprocess.run([sys.executable, "-m", "bench.soak", "--photos", "120", "--every", "12",
                           "--json", str(out)], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(out.read_text())
    print({k: v for k, v in r.items() if k != "samples"}, [s["rss_mib"] for s in r["samples"]])
    assert r["added"] == 120 and r["skipped"] == 0
    assert len(r["samples"]) >= 10
    assert r["growth_second_half_mib"] < GROWTH_BOUND_MIB, r["samples"]
