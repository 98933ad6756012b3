"""Where the test suite's CPU goes, per test: a pytest plugin and its report.

    GRACEFUL_SUITE_CPU=/tmp/cpu python3 -m pytest -p bench.suite_cpu -m "slow or not slow" -n 2 --dist loadgroup
    python -m bench.suite_cpu /tmp/cpu            # modules and the 40 costliest tests

Each test's CPU is its worker's own (`self`) plus that of the child processes reaped while it
ran (`child`: CLI processes, the Streamlit server, Chromium through Playwright's driver). A
server that outlives its test (the PostgreSQL server, a group's Ray runtime or Milvus server)
is counted where it is stopped; Ray's workers are the raylet's children and are not counted.
Wall time minus CPU is the time a test left its core idle: waits on servers and browsers."""

from __future__ import annotations

import glob
import json
import os
import resource
import sys
import time
from collections import Counter

import pytest


def _cpu() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    prefix = os.environ.get("GRACEFUL_SUITE_CPU")
    own0, kids0 = _cpu()
    start = time.time()
    yield
    if not prefix:
        return
    own1, kids1 = _cpu()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(f"{prefix}.{worker}.jsonl", "a") as f:
        f.write(
            json.dumps(
                {
                    "id": item.nodeid,
                    "start": start,
                    "wall": time.time() - start,
                    "self": own1 - own0,
                    "child": kids1 - kids0,
                }
            )
            + "\n"
        )


def report(prefix: str, top: int = 40) -> str:
    rows = [
        json.loads(line) for path in sorted(glob.glob(f"{prefix}.*.jsonl")) for line in open(path)
    ]
    if not rows:
        return f"no records at {prefix}.*.jsonl"
    cpu = Counter[str]()
    wall = Counter[str]()
    for r in rows:
        module = r["id"].split("::")[0]
        cpu[module] += r["self"] + r["child"]
        wall[module] += r["wall"]
    lines = [
        f"{len(rows)} tests: {sum(cpu.values()):.0f} core-s "
        f"({sum(r['self'] for r in rows):.0f} in the workers, "
        f"{sum(r['child'] for r in rows):.0f} in child processes), "
        f"{sum(wall.values()):.0f} s of test wall time",
        "",
        "core-s   wall s  module",
    ]
    lines += [f"{v:7.1f}  {wall[k]:7.1f}  {k}" for k, v in cpu.most_common()]
    lines += ["", "core-s  (self  child)  wall s  test"]
    for r in sorted(rows, key=lambda r: -(r["self"] + r["child"]))[:top]:
        lines.append(
            f"{r['self'] + r['child']:6.1f}  ({r['self']:5.1f} {r['child']:5.1f})  "
            f"{r['wall']:6.1f}  {r['id']}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m bench.suite_cpu PREFIX [TOP]")
    print(report(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 40))
