"""The index kinds: exact flat (default) and IVF for large galleries, both rebuilt from and
kept in step with the catalog."""
from __future__ import annotations

import numpy as np
import pytest

from search.api import Gallery
from search.storage.faiss_index import SpaceIndex, effective_kind


def clustered(n: int, dim: int = 64, centers: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def big_gallery(home) -> tuple[Gallery, np.ndarray]:
    g = Gallery.open(home, create=True)
    n = 12_000
    x = clustered(n)
    with g.core.catalog.transaction():
        g.core.catalog.conn.db.conn.executemany(
            "INSERT INTO images (sha256, name, ext) VALUES (?, ?, '.jpg')",
            ((f"{i:064x}", f"{i}.jpg") for i in range(n)))
        g.core.catalog.vectors.put_vectors(list(range(1, n + 1)), x, "synthetic", "s")
    return g, x


def test_effective_kind():
    assert effective_kind("flat", 10**7) == "flat"
    assert effective_kind("ivf", 500) == "flat" and effective_kind("ivf", 20_000) == "ivf"
    assert effective_kind("auto", 49_999) == "flat" and effective_kind("auto", 50_000) == "ivf"
    assert effective_kind("auto", 250_000) == "pq" and effective_kind("sq8", 500) == "flat"
    with pytest.raises(ValueError):
        effective_kind("hnsw", 1)


def test_ivf_index_is_searchable_persistent_and_kept_in_step(big_gallery):
    g, x = big_gallery
    exact = SpaceIndex.build(g.core.catalog, "s", "flat")
    assert g.core.rebuild_index("s", kind="ivf") == "ivf"
    idx = g.core.index("s")
    assert idx.kind == "ivf" and idx.ntotal == len(x)
    assert sorted(idx.ids().tolist()) == list(range(1, len(x) + 1))
    q = x[:200]
    _, approx_ids = idx.search(q, 10)
    _, exact_ids = exact.search(q, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx_ids, exact_ids)])
    assert recall > 0.9, recall
    assert np.allclose(idx.vectors([5])[0], x[4], atol=1e-3)
    # a re-embedded vector replaces the old one in place
    new = clustered(1, seed=7)
    with g.core.catalog.transaction():
        g.core.catalog.vectors.put_vectors([5], new, "synthetic-v2", "s")
    g.core.sync_index("s", [5], new)
    assert idx.ntotal == len(x) and np.allclose(idx.vectors([5])[0], new[0], atol=1e-3)
    g.core.save_indexes()
    loaded, how = SpaceIndex.open(g.core.catalog, g.core.index_dir, "s", "ivf")
    assert how == "loaded" and loaded.kind == "ivf" and loaded.ntotal == len(x)
    assert loaded.index.nprobe == idx.index.nprobe and len(loaded.ids()) == len(x)
    # another process writes: the loaded index catches up
    with g.core.catalog.transaction():
        g.core.catalog.vectors.put_vectors([6], new, "synthetic-v2", "s")
    assert loaded.catch_up(g.core.catalog) == 1 and np.allclose(loaded.vectors([6])[0], new[0], atol=1e-3)
    # back to exact
    assert g.core.rebuild_index("s", kind="flat") == "flat"
    assert g.core.index("s").kind == "flat" and g.info().index_kind["setting"] == "flat"


@pytest.mark.parametrize("kind", ["sq8", "pq"])
def test_compressed_kinds_rerank_exactly_and_stay_in_step(big_gallery, kind):
    """sq8 / pq keep compact codes in memory; the short list they find is ranked by the exact
    stored vectors, so scores are exact and recall is that of the short list."""
    g, x = big_gallery
    exact = SpaceIndex.build(g.core.catalog, "s", "flat")
    assert g.core.rebuild_index("s", kind=kind) == kind
    idx = g.core.index("s")
    assert idx.kind == kind and idx.ntotal == len(x)
    code_bytes = {"sq8": 64, "pq": 8}[kind]  # per 64-d vector, vs 256 for float32
    assert idx.index.code_size == code_bytes
    q = x[:200]
    scores, found = idx.search(q, 10)
    exact_scores, exact_ids = exact.search(q, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(found, exact_ids)])
    assert recall > 0.95, recall
    stored = g.core.catalog.vectors.serving_vectors_of(found[0].tolist(), "s")
    assert np.allclose(scores[0], [stored[int(i)] @ q[0] for i in found[0]], atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # ranked by exact score
    assert np.allclose(idx.vectors([5])[0], x[4], atol=1e-3)  # exact, from the catalog
    new = clustered(1, seed=7)
    with g.core.catalog.transaction():
        g.core.catalog.vectors.put_vectors([5], new, "synthetic-v2", "s")
    g.core.sync_index("s", [5], new)
    s5, f5 = idx.search(new, 1)
    assert f5[0, 0] == 5 and s5[0, 0] > 0.999
    g.core.save_indexes()
    loaded, how = g.core.vector_store.open(g.core.catalog, "s", kind)
    assert how == "loaded" and loaded.kind == kind and loaded.ntotal == len(x)
    assert loaded.search(new, 1)[1][0, 0] == 5
