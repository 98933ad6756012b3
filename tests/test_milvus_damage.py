"""Fault injection on a gallery's Milvus Lite file (issue 20, finding 6; docs/RELIABILITY.md).

Milvus Lite 3.x keeps a folder at GALLERY/milvus.db (LOCK, collections/<name>/schema.json,
manifest.json, partitions/_default/data/*.parquet and indexes/*.idx). Each case damages one
thing the way a disk, a copy or a user can: a 0-byte, half-truncated or bit-flipped data file,
bit flips in the index file (read without any error: wrong results), and a 0-byte regular file
where the folder belongs. Then, in real processes: search/info/reindex fail with one line naming
`graceful check --repair` (or, where Milvus Lite reads the damage silently, keep working),
`check` reports a problem with the next step, `check --repair` moves the folder aside
(milvus.db.damaged-<time>) and rebuilds the collection from the catalog, and search is right
again. The models are the numpy fakes (tests/fakes.py, given to the CLI by GRACEFUL_MODELS);
Milvus Lite, its files, the damage and the processes are real."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cli_fork
import pytest
from fakes import ALBUMS, PER_ALBUM, cli_env, open_fake

pytestmark = pytest.mark.slow
N = len(ALBUMS) * PER_ALBUM


def graceful(home, *args, timeout=180):
    return cli_fork.run(args, env=cli_env(home, GRACEFUL_THREADS="2"), timeout=timeout)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, fake_photos) -> Path:
    """A Milvus Lite gallery of the fake photos (fake-a), built once and copied for each case."""
    pytest.importorskip("milvus_lite", reason="graceful[milvus] is not installed")
    home = tmp_path_factory.mktemp("milvus_damage") / "gallery"
    g = open_fake(home, store="milvus", create=True)
    g.add([fake_photos])
    g.close()
    assert (home / "milvus.db").is_dir() and (home / "milvus.db" / "LOCK").exists()
    return home


def _one(home: Path, pattern: str) -> Path:
    found = sorted((home / "milvus.db").glob(pattern))
    assert len(found) == 1, (pattern, found)
    return found[0]


def _flip(path: Path, start: int, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    for i in range(start, min(len(data), start + n)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[i]
        n, shift, i = n | (b & 0x7F) << shift, shift + 7, i + 1
        if not b & 0x80:
            return n, i


def _skip(buf: bytes, i: int, kind: int) -> int:
    """The offset past one Thrift compact-protocol value of `kind` at `i` (12: a struct)."""
    if kind in (1, 2):  # a bool field: its value is in the field header
        return i
    if kind in (3, 7):  # byte, double
        return i + (1 if kind == 3 else 8)
    if kind in (4, 5, 6):  # zigzag varints
        return _varint(buf, i)[1]
    if kind == 8:  # binary: length, bytes
        n, i = _varint(buf, i)
        return i + n
    if kind in (9, 10):  # list, set: size and element kind, elements
        n, elem, i = buf[i] >> 4, buf[i] & 0x0F, i + 1
        if n == 15:
            n, i = _varint(buf, i)
        for _ in range(n):
            i = _skip(buf, i, elem)
        return i
    assert kind == 12, f"a Thrift value of kind {kind} in a page header"
    while buf[i]:  # fields until the stop byte
        head, i = buf[i], i + 1
        if not head >> 4:  # no field-id delta: the id follows
            i = _varint(buf, i)[1]
        i = _skip(buf, i, head & 0x0F)
    return i + 1


def _vector_page(path: Path) -> int:
    """Where the compressed bytes of the first data page of the vector column start: past the
    page's header (a Thrift compact struct) at the column chunk's data_page_offset."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    chunk = next(meta.row_group(0).column(c) for c in range(meta.num_columns)
                 if meta.row_group(0).column(c).path_in_schema.startswith("vector."))
    assert chunk.compression == "SNAPPY", chunk
    return _skip(path.read_bytes(), chunk.data_page_offset, 12)


DATA = "collections/*/partitions/_default/data/*.parquet"
INDEX = "collections/*/partitions/_default/indexes/*.idx"


def _zero_data(home):
    _one(home, DATA).write_bytes(b"")


def _truncate_data(home):
    f = _one(home, DATA)
    os.truncate(f, f.stat().st_size // 2)


def _flip_data(home):
    f = _one(home, DATA)  # the start of the vector column's compressed page: "Corrupt snappy ..."
    _flip(f, _vector_page(f))


def _flip_index(home):
    f = _one(home, INDEX)  # read without an error: some photos stop finding themselves
    _flip(f, f.stat().st_size // 2)


def _zero_file(home):
    shutil.rmtree(home / "milvus.db")
    (home / "milvus.db").write_bytes(b"")  # a 0-byte file where the folder belongs


CASES = {"0-byte data file": (_zero_data, True), "truncated data file": (_truncate_data, True),
         "bit-flipped data file": (_flip_data, True), "bit-flipped index file": (_flip_index, False),
         "0-byte milvus.db": (_zero_file, True)}


@pytest.mark.parametrize("case", list(CASES))
def test_a_damaged_milvus_lite_file_is_reported_and_repaired(pristine, tmp_path, fake_photos, case):
    damage, loud = CASES[case]
    home = tmp_path / "gallery"
    shutil.copytree(pristine, home)
    damage(home)
    query = sorted((fake_photos / "red").iterdir())[0]

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

    g = open_fake(home)
    try:
        assert g.check().ok  # what `graceful check` says after the repair (run in this process)
        idx = g.core.index()
        assert idx.ntotal == N
        want = {int(i): v for c in g.core.catalog.vectors.serving_rows("fake-a") for i, v in zip(c.ids, c.vectors)}
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
