"""The Milvus store against a real Milvus standalone server (PyPI `milvus` 2.3.x, in a network
namespace of its own, reached through 127.0.0.1 only: the `milvus_server` fixture). The same
behaviours as on a Milvus Lite file: ingest + search, upgrade + rollback, backfill, and
`check --repair` after the collection was dropped behind the catalog's back. On the numpy fake
models (tests/fakes.py): what is tested is the store, and the real models' behaviour on Milvus is
tested on Milvus Lite (the store-parametrised tests)."""
from __future__ import annotations

import pytest
from fakes import FakeModels

from search.api import Gallery

pytestmark = pytest.mark.slow
NEW = "fake-a2"  # a model in fake-a's space, as a compatible upgrade


@pytest.fixture
def server_gallery(milvus_server, home, monkeypatch):
    monkeypatch.setenv("GRACEFUL_STORE", "milvus")
    monkeypatch.setenv("GRACEFUL_MILVUS_URI", milvus_server)
    g = Gallery.open(home, create=True, models=FakeModels())
    assert g.core.vector_store.describe() == {"kind": "milvus", "uri": milvus_server, "mode": "server"}
    yield g
    g.close()


def test_a_gallery_on_a_milvus_server(server_gallery, fake_photos):
    g = server_gallery
    g.add([fake_photos])
    query = sorted((fake_photos / "blue").iterdir())[0]
    hits = g.search(query, k=3).hits
    assert hits[0].name == query.name and hits[0].embedded_by == "fake-a"
    assert g.core.index().ntotal == 48

    g.upgrade(NEW)  # no vector recomputed: the collection is untouched
    assert g.active_model == NEW and g.search(query, k=1).hits[0].name == query.name
    g.backfill()
    assert g.core.index().ntotal == 48
    assert g.search(query, k=1).hits[0].embedded_by == NEW
    g.rollback()
    assert g.active_model == "fake-a" and g.search(query, k=1).hits[0].name == query.name

    report = g.check()
    assert report.ok, report.as_dict()
    g.core.vector_store.client.drop_collection(g.core.vector_store.collection("fake-a"))
    g.close()
    g = Gallery.open(g.home, models=FakeModels())
    problems = [f for f in g.check().findings if f.status == "problem"]
    assert [f.check for f in problems] == ["index"] and "missing" in problems[0].detail
    repaired = [f for f in g.check(repair=True).findings if f.status == "repaired"]
    assert [f.check for f in repaired] == ["index"]
    assert g.check().ok and g.core.index().ntotal == 48
    assert g.search(query, k=1).hits[0].name == query.name
    g.close()
