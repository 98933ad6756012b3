"""Fault injection on a gallery's Milvus Lite file (issue 20, finding 6; docs/RELIABILITY.md).

Milvus Lite 3.x keeps a folder at GALLERY/milvus.db (LOCK, collections/<name>/schema.json,
manifest.json, partitions/_default/data/*.parquet and indexes/*.idx). Each case damages one
thing the way a disk, a copy or a user can: a 0-byte, half-truncated or bit-flipped data file,
bit flips in the index file (read without any error: wrong results), and a 0-byte regular file
where the folder belongs. Then, in real processes: search/info/reindex fail with one line naming
`graceful check --repair` (or, where Milvus Lite reads the damage silently, keep working),
`check` reports a problem with the next step, `check --repair` moves the folder aside
(milvus.db.damaged-<time>) and rebuilds the collection from the catalog, and search is right
again."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from search.api import Gallery

pytestmark = pytest.mark.slow


def graceful(home, *args, timeout=180):
    env = {**os.environ, "GRACEFUL_HOME": str(home), "GRACEFUL_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "search.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, few_photos) -> Path:
    """A 12-photo Milvus Lite gallery, built once and copied for each case."""
    pytest.importorskip("milvus_lite", reason="graceful[milvus] is not installed")
    home = tmp_path_factory.mktemp("milvus_damage") / "gallery"
    g = Gallery.open(home, create=True, store="milvus")
    g.add([few_photos])
    g.close()
    assert (home / "milvus.db").is_dir() and (home / "milvus.db" / "LOCK").exists()
    return home


def _one(home: Path, pattern: str) -> Path:
    found = sorted((home / "milvus.db").glob(pattern))
    assert len(found) == 1, (pattern, found)
    return found[0]


def _flip(path: Path, at: float, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    for i in range(start, min(len(data), start + n)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


DATA = "collections/*/partitions/_default/data/*.parquet"
INDEX = "collections/*/partitions/_default/indexes/*.idx"


def _zero_data(home):
    _one(home, DATA).write_bytes(b"")


def _truncate_data(home):
    f = _one(home, DATA)
    os.truncate(f, f.stat().st_size // 2)


def _flip_data(home):
    _flip(_one(home, DATA), 0.5)  # inside the compressed vector pages: "Corrupt snappy ..."


def _flip_index(home):
    _flip(_one(home, INDEX), 0.5)  # read without an error: some photos stop finding themselves


def _zero_file(home):
    shutil.rmtree(home / "milvus.db")
    (home / "milvus.db").write_bytes(b"")  # a 0-byte file where the folder belongs


CASES = {"0-byte data file": (_zero_data, True), "truncated data file": (_truncate_data, True),
         "bit-flipped data file": (_flip_data, True), "bit-flipped index file": (_flip_index, False),
         "0-byte milvus.db": (_zero_file, True)}


@pytest.mark.parametrize("case", list(CASES))
def test_a_damaged_milvus_lite_file_is_reported_and_repaired(pristine, tmp_path, few_photos, case):
    damage, loud = CASES[case]
    home = tmp_path / "gallery"
    shutil.copytree(pristine, home)
    damage(home)
    query = sorted((few_photos / "sunflower").iterdir())[0]

    r = graceful(home, "search", query, "-k", "3", "--json")
    if loud:  # Milvus Lite fails to read it: one line with the next step, never a traceback
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert "is damaged or unreadable" in r.stderr and "graceful check --repair" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        if case == "bit-flipped data file":
            assert "Corrupt snappy compressed data" in r.stderr
    else:  # read silently: only a check that compares with the catalog sees it
        assert r.returncode == 0, r.stderr

    r = graceful(home, "check", "--json")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    report = json.loads(r.stdout)
    index = [f for f in report["findings"] if f["check"] == "index"]
    assert len(index) == 1 and index[0]["status"] == "problem", report
    assert "Milvus Lite file" in index[0]["detail"] and "is damaged" in index[0]["detail"]
    assert "graceful check --repair" in index[0]["next_step"]
    assert not list(home.glob("milvus.db.damaged-*"))  # check alone changes nothing

    r = graceful(home, "check", "--repair", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    index = [f for f in json.loads(r.stdout)["findings"] if f["check"] == "index"]
    assert index[0]["status"] == "repaired" and "moved it aside" in index[0]["detail"]
    aside = list(home.glob("milvus.db.damaged-*"))
    assert len(aside) == 1 and (home / "milvus.db").is_dir()

    r = graceful(home, "check", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"]
    g = Gallery.open(home)
    try:
        idx = g.core.index()
        assert idx.ntotal == 12
        want = {int(i): v for c in g.core.catalog.vectors.serving_rows("lite0") for i, v in zip(c.ids, c.vectors)}
        ids = sorted(want)
        scores, found = idx.search(idx.vectors(ids), 1)
        assert list(found[:, 0]) == ids and scores.min() > 0.999  # every photo finds itself
        hits = g.search(query, k=1).hits
        assert hits[0].name == query.name
    finally:
        g.close()


def test_other_commands_name_the_repair_in_one_line(pristine, tmp_path):
    home = tmp_path / "gallery"
    shutil.copytree(pristine, home)
    _flip_data(home)
    for args in (["info"], ["reindex"], ["backfill"]):
        r = graceful(home, *args)
        assert r.returncode == 1 and "Traceback" not in r.stderr, (args, r.stderr)
        assert "graceful check --repair" in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
