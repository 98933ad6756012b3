"""Upgrade engine on real photos and the shipped compatible model: upgrade without re-indexing,
refusals, mixed galleries, rollback, backfill, re-embed, comparison, and a kill -9 of a backfill
and a re-embed computing with the real models. On FAISS and SQLite: the same scenarios on every
store and catalog are tests/test_upgrades_fast.py's and tests/test_kill_stores.py's."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import caltech_subset

from search.api import Gallery, GalleryError
from search.ops import backfill as bf
from search.ops.compare import compare, queries_from_folder, queries_from_log
from search.ops.ingest import ingest
from search.ops.query import search_file
from search.ops.reembed import reembed
from search.ops.upgrade import rollback, upgrade

SHIPPED = "lite2-compat-lite0"


@pytest.fixture(scope="module")
def upgrade_photos(tmp_path_factory) -> Path:
    """6 classes x 8 photos indexed before the upgrade; 6 x 3 more added after it."""
    root = tmp_path_factory.mktemp("upgrade")
    before = caltech_subset(root / "before", "test", 6, 8)
    after_all = caltech_subset(root / "after_all", "test", 6, 11)
    after = root / "after"
    for f in after_all.rglob("*.jpg"):
        if not (before / f.parent.name / f.name).exists():
            (after / f.parent.name).mkdir(parents=True, exist_ok=True)
            f.rename(after / f.parent.name / f.name)
    return root


@pytest.fixture
def lite0_gallery(home, upgrade_photos, request, gallery_snapshot) -> Gallery:
    """A private copy of a lite0 gallery of the 48 `before` photos, built once per session."""
    from conftest import copy_gallery, ingested

    src = gallery_snapshot("upgrade-before", ingested([upgrade_photos / "before"]))
    g = Gallery.open(copy_gallery(src, home))
    assert g.core.catalog.images.count_images() == 48
    yield g
    g.close()


def own_id(g: Gallery, f: Path) -> int | None:
    from search.storage.imagestore import sha256_bytes

    return g.core.catalog.images.image_id(sha256_bytes(f.read_bytes()))


def counts(g: Gallery) -> dict:
    return {(r["model"], r["space"]): r["vectors"] for r in g.core.catalog.vectors.vector_counts()}


def test_upgrade_recomputes_nothing_and_mixes_new_photos(lite0_gallery, upgrade_photos):
    g = lite0_gallery
    n = g.core.catalog.images.count_images()
    before = counts(g)
    result = upgrade(g.core, SHIPPED)
    assert result.changed and result.previous == "lite0" and result.space == "lite0"
    assert result.preflight.passed and result.preflight.self_recall >= 0.5
    assert counts(g) == before  # no vector recomputed
    assert g.active_model == SHIPPED and g.space == "lite0"
    # queries by the new model search the old vectors directly
    q = next((upgrade_photos / "before").rglob("*.jpg"))
    hits = search_file(g.core, q, k=5).hits
    assert hits[0].name == q.name and hits[0].embedded_by == "lite0"
    # new photos are embedded by the new model into the same index: a mixed gallery
    report = ingest(g.core, [upgrade_photos / "after"])
    assert report.model == SHIPPED and report.added > 0
    assert counts(g)[(SHIPPED, "lite0")] == report.added
    assert g.core.index().ntotal == n + report.added
    # a photo that was really added now (Caltech has a few byte-identical duplicates)
    q2 = next(f for f in sorted((upgrade_photos / "after").rglob("*.jpg"))
              if own_id(g, f) in g.core.catalog.vectors.vectors_by_model(SHIPPED)[0])
    res = search_file(g.core, q2, k=10)
    assert res.hits[0].name == q2.name and res.hits[0].embedded_by == SHIPPED
    assert {"lite0", SHIPPED} <= {h.embedded_by for h in res.hits}  # both kinds of vectors

    # rollback: instant, the new model's vectors stay searchable (same space)
    rb = rollback(g.core)
    assert rb.model == "lite0" and rb.kept_vectors == report.added and rb.need_reembed == 0
    assert g.active_model == "lite0"
    # lite0 queries reach the vectors only the new model computed (cross-model, so top-10)
    assert own_id(g, q2) in [h.image_id for h in search_file(g.core, q2, k=10).hits]
    with pytest.raises(GalleryError, match="nothing to roll back"):
        rollback(g.core)


def test_refusals_change_nothing(cold_features, lite0_gallery, tmp_path, make_checkpoint,
                                 monkeypatch):
    from models.features import FeatureCache

    g = lite0_gallery
    state = (g.active_model, counts(g), g.core.catalog.state.get_state("model_history", []))
    with pytest.raises(GalleryError, match="unknown model"):
        upgrade(g.core, "lite7")
    with pytest.raises(GalleryError, match="space 'lite2'.*reembed"):  # (without --dry-run
        upgrade(g.core, "lite2", dry_run=True)  # it fits a bridge: tests/test_bridge.py)
    corrupt = tmp_path / "broken.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    with pytest.raises(GalleryError):
        upgrade(g.core, str(corrupt))
    g.core.models_dir.mkdir(parents=True, exist_ok=True)
    make_checkpoint(g.core.models_dir / "liar.safetensors", dim=1280, name="liar")  # random head, claims lite0

    def full(*args):
        raise OSError(28, "No space left on device")
    with monkeypatch.context() as m:  # a cache that cannot be written does not stop the check
        m.setattr(FeatureCache, "add", full)
        with pytest.raises(GalleryError, match="pre-flight check refused liar .* do not line up"):
            upgrade(g.core, "liar")
    dry = upgrade(g.core, SHIPPED, dry_run=True)
    assert not dry.changed and dry.preflight.passed
    assert (g.active_model, counts(g), g.core.catalog.state.get_state("model_history", [])) == state
    # The pre-flight of a head on a backbone it did not fine-tune leaves the backbone's features
    # in the gallery's feature cache (HOME/cache, where fits and bridges keep theirs) and takes
    # them from there the next time: the second check decodes nothing and says the same.
    first = dry.preflight
    assert g.core.cache_dir == g.core.home / "cache"
    assert first.decoded >= first.sample > 0 and first.images_per_second > 0
    assert any((g.core.cache_dir / "lite2").glob("*.npz"))
    again = upgrade(g.core, SHIPPED, dry_run=True).preflight
    assert again.decoded == 0 and again.sample == first.sample and again.passed
    assert again.verdict == first.verdict and abs(again.own_rank - first.own_rank) < 0.01
    assert abs(again.agreement - first.agreement) < 0.02
    forced = upgrade(g.core, "liar", force=True)
    assert forced.changed and forced.forced and g.active_model == "liar"


def test_backfill_orders_limit_and_status(cold_features, lite0_gallery, monkeypatch):
    """Also: the pre-flight left the lite2 features of every photo of this small gallery in the
    feature cache (HOME/cache); with every other photo's kept there, the backfill to a head on
    lite2 decodes only the others, commits the cached ones with the decoded batches (no more
    commits than batches of each kind, plus one), and their vectors are the model's
    (search/ops/reuse.py)."""
    from models.features import FeatureCache
    from models.imageio import decode

    import search.ops.embedjob as job

    g = lite0_gallery
    upgrade(g.core, SHIPPED)
    n = g.core.catalog.images.count_images()
    cache = FeatureCache(g.core.cache_dir, "lite2")
    shas = {i: r.sha256 for i, r in g.core.catalog.images.images(list(range(1, n + 1))).items()}
    assert not cache.missing(list(shas.values()))
    kept = {i: shas[i] for i in shas if i % 2}
    features = cache.get(list(kept.values()))
    shutil.rmtree(cache.dir)
    FeatureCache(g.core.cache_dir, "lite2").add(list(kept.values()), features)
    decoded: list[bytes] = []
    monkeypatch.setattr(job, "decode", lambda data, size: decoded.append(data) or decode(data, size))
    commits: list[int] = []
    write = g.core.write_vectors
    monkeypatch.setattr(g.core, "write_vectors",
                        lambda ids, *a, **k: commits.append(len(ids)) or write(ids, *a, **k))
    for order in bf.ORDERS:
        missing, stale = bf.candidates(g.core, order)
        assert missing == [] and sorted(stale) == sorted(range(1, n + 1))
    state = bf.backfill(g.core, "uncertainty", limit=10)
    assert state.done == 10
    st = bf.status(g.core)
    assert st["by_active_model"] == 10 and st["older_vectors"] == n - 10
    assert g.core.index().ntotal == n  # replaced, not added
    first = len(decoded)
    assert first <= 10 and len(commits) <= 2  # a decoded batch (+ the cached before it), the rest
    first_commits = len(commits)
    bf.backfill(g.core, "oldest")
    assert bf.status(g.core)["fraction_backfilled"] == 1.0
    assert bf.backfill(g.core).done == 0  # nothing left
    assert len(decoded) == n - len(kept) and sum(commits) == n
    later = len(decoded) - first  # decoded by the second job, of its n - 10 photos
    assert len(commits) - first_commits <= -(-later // 16) + -(-(n - 10 - later) // 16) + 1
    model = g.core.load_model(SHIPPED)
    for i in (min(kept), min(set(shas) - set(kept))):  # one from the cache, one decoded
        row = g.core.catalog.images.images([i])[i]
        fresh = model.embed_images([decode(g.core.store.read(row.sha256, row.ext), 260).image])[0]
        stored = g.core.catalog.vectors.serving_vectors_of([i], "lite0")[i]
        assert float(fresh @ stored) / float(np.linalg.norm(stored)) > 0.999


def test_backfill_records_its_quality_curve(lite0_gallery, upgrade_photos):
    g = lite0_gallery
    upgrade(g.core, SHIPPED)
    curve = bf.CurveRecorder(g.core, upgrade_photos / "after", points=4)
    state = bf.backfill(g.core, "random", batch_size=8, curve=curve)
    assert state.done == g.core.catalog.images.count_images()
    fractions = [p["fraction"] for p in curve.curve]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert len(fractions) >= 4 and all(0 <= p["map"] <= 1 for p in curve.curve)
    saved = bf.latest_curve(g.core)
    assert saved["curve"] == curve.curve and saved["order"] == "random"
    assert 0 < saved["auc_map"] <= 1
    with pytest.raises(GalleryError, match="labelled"):
        bf.CurveRecorder(g.core, upgrade_photos / "after" / "Faces")


def test_backfill_quality_curve_and_auc():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 10)
    centers = rng.standard_normal((5, 16))
    new = centers[labels] + 0.3 * rng.standard_normal((50, 16))
    old = rng.standard_normal((50, 16))  # useless old vectors
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    old /= np.linalg.norm(old, axis=1, keepdims=True)
    curve = bf.quality_curve(old.astype(np.float32), new.astype(np.float32), labels, np.arange(50), 5)
    assert [c["fraction"] for c in curve] == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert curve[-1]["map"] > curve[0]["map"] + 0.3
    assert 0 < bf.area_under_curve(curve) < 1


def test_reembed_incompatible_model_alongside_then_switch(lite0_gallery, upgrade_photos):
    g = lite0_gallery
    n = g.core.catalog.images.count_images()
    q = next((upgrade_photos / "before").rglob("*.jpg"))
    seen = []

    def during(state):
        # searches keep being served from the current space while the new index is built
        seen.append((g.active_model, search_file(g.core, q, k=1, log=False).hits[0].name))

    state, switched = reembed(g.core, "lite1", batch_size=8, on_progress=during)
    assert switched and state.done == n and g.active_model == "lite1" and g.space == "lite1"
    assert all(m == "lite0" and name == q.name for m, name in seen[:-1])
    assert counts(g)[("lite0", "lite0")] == n and counts(g)[("lite1", "lite1")] == n
    assert search_file(g.core, q, k=1).hits[0].embedded_by == "lite1"
    rb = rollback(g.core)
    assert rb.model == "lite0" and g.space == "lite0" and rb.kept_vectors == 0


def test_compare_labelled_queries_and_log(lite0_gallery, upgrade_photos, tmp_path):
    g = lite0_gallery
    upgrade(g.core, SHIPPED)
    queries = queries_from_folder(upgrade_photos / "after")
    assert queries and all(q.label for q in queries)
    report = compare(g.core, "lite0", SHIPPED, queries, k=5)
    s = report["summary"]
    assert s["labelled"] and s["queries"] == len(queries) and 0 <= s["overlap_at_k"] <= 1
    assert {"nfr", "pfr", "old_metrics", "new_metrics"} <= set(s)
    assert s["new_metrics"]["map_depth"] == "full"
    row = report["queries"][0]
    assert set(row["gained"]) == set(row["new"]) - set(row["old"])
    assert set(row["lost"]) == set(row["old"]) - set(row["new"])
    assert Path(report["path"]).exists()
    # the query log replays real searches
    for f in list((upgrade_photos / "after").rglob("*.jpg"))[:3]:
        search_file(g.core, f, k=3, log=True)
    logged = queries_from_log(g.core)
    assert len(logged) == 3
    rep = compare(g.core, "lite0", SHIPPED, logged, k=3, save=False)
    assert rep["summary"]["queries"] == 3 and not rep["summary"]["labelled"]
