"""The Streamlit app's pages through streamlit.testing.v1.AppTest (real engine, real models): the
whole app (app.py, its navigation), each page alone (search/ui/pages/*.py) and the deep links."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"Gallery": "gallery_page.py", "Search": "search_page.py", "Models": "models_page.py",
           "Compare": "compare_page.py", "Maintenance": "maintenance_page.py"}


@pytest.fixture
def app(home, monkeypatch):
    monkeypatch.setenv("GRACEFUL_HOME", str(home))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception
    return at


def page(at: AppTest, name: str) -> AppTest:
    """Open a page from the sidebar's navigation (as a click on its link does)."""
    at.switch_page(f"search/ui/pages/{SCRIPTS[name]}").run()
    assert not at.exception, at.exception
    assert at.header[0].value == name
    return at


def text_of(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [m.value for m in at.info] + \
        [m.value for m in at.success] + [m.value for m in at.error] + [m.value for m in at.warning] + \
        [c.value for c in at.caption] + [h.value for h in at.subheader] + [h.value for h in at.header]
    return "\n".join(str(p) for p in parts)


def wait_for(at: AppTest, text: str, timeout: float = 120) -> None:
    """Rerun the page until a background job's outcome shows up."""
    deadline = time.time() + timeout
    while text not in text_of(at):
        assert time.time() < deadline, text_of(at)
        time.sleep(0.5)
        at.run()


def test_empty_gallery_is_friendly(app):
    assert "gallery is empty" in text_of(app)
    for name in ("Search", "Models", "Compare", "Maintenance"):
        page(app, name)
    assert "Index photos first" in text_of(app)
    page(app, "Compare")
    assert "upgrade the gallery's model first" in text_of(app)


def test_a_damaged_catalog_is_a_message_not_a_traceback(home, monkeypatch):
    home.mkdir(parents=True)
    (home / "catalog.db").write_bytes(b"garbage" * 500)
    monkeypatch.setenv("GRACEFUL_HOME", str(home))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception
    assert "the catalog (catalog.db) is damaged" in at.error[0].value
    at = alone("Models")  # a page alone: the same one message
    at.run()
    assert not at.exception and not at.header
    assert "the catalog (catalog.db) is damaged" in at.error[0].value


def test_upload_search_upgrade_compare_rollback(app, few_photos, tmp_path):
    files = sorted(few_photos.rglob("*.jpg"))
    uploads = [(f.name, f.read_bytes(), "image/jpeg") for f in files]
    uploads.append(("broken.jpg", b"definitely not a jpeg", "image/jpeg"))
    app.file_uploader(key="uploads-0").set_value(uploads).run()
    app.button(key="add-uploads").click().run()
    assert not app.exception
    out = text_of(app)
    assert "Added 12 photos" in out and "1 skipped" in out
    assert "broken.jpg" in app.dataframe[0].value["file"].tolist()
    assert "12 photos" in text_of(app) and "gallery is empty" not in text_of(app)
    assert len(app.file_uploader(key="uploads-1").value or []) == 0  # emptied for the next batch

    page(app, "Search")
    query = files[0]
    app.file_uploader(key="query-upload").set_value((query.name, query.read_bytes(), "image/jpeg")).run()
    assert not app.exception
    assert "12 results · lite0" in text_of(app)

    page(app, "Models")
    assert "Active model: **lite0**" in text_of(app)
    app.selectbox(key="upgrade-target").set_value("lite2-compat-lite0").run()
    app.button(key="upgrade").click().run()
    assert not app.exception
    out = text_of(app)
    assert "Pre-flight passed" in out and "Upgraded lite0 → lite2-compat-lite0" in out

    # the optional background backfill runs in a thread with its own connection
    app.button(key="backfill-start").click().run()
    wait_for(app, "100% of the gallery is embedded by lite2-compat-lite0")
    assert "compatibility matrix" in text_of(app).lower()

    page(app, "Search")  # the logged search from before feeds the comparison
    page(app, "Compare")
    app.button(key="cmp-run").click().run()
    assert not app.exception
    out = text_of(app)
    assert "lite0 → lite2-compat-lite0" in out

    page(app, "Models")
    app.button(key="rollback").click().run()
    assert "Rolled back lite2-compat-lite0 → lite0" in text_of(app)

    # training an adapter on a gallery too small for it fails with a clear message
    page(app, "Maintenance")
    app.selectbox(key="train-backbone").set_value("lite1").run()
    app.button(key="train-start").click().run()
    wait_for(app, "need at least 16")


def test_generations_benchmark_runs_from_the_maintenance_page(app, few_photos, tmp_path, monkeypatch):
    from conftest import caltech_subset

    monkeypatch.setenv("GRACEFUL_IMPORT_ROOTS", str(tmp_path))
    classes = ["airplanes", "Motorbikes", "sunflower"]
    train = caltech_subset(tmp_path / "train", "train", classes, 6)
    test = caltech_subset(tmp_path / "test", "test", classes, 4)
    app.file_uploader(key="uploads-0").set_value(
        [(f.name, f.read_bytes(), "image/jpeg") for f in sorted(few_photos.rglob("*.jpg"))]).run()
    app.button(key="add-uploads").click().run()
    page(app, "Maintenance")
    app.text_input(key="gen-train").set_value(str(train)).run()
    app.text_input(key="gen-test").set_value(str(test)).run()
    app.selectbox(key="gen-kind").set_value("hetero").run()
    app.button(key="gen-start").click().run()
    wait_for(app, "bench-hetero-ce", timeout=300)
    table = app.dataframe[-1].value
    assert list(table["query_model"]) == ["lite2 (cloud, same model)", "lite1 compatible with cloud",
                                          "lite0 compatible with cloud"]
    assert (table["images_per_s"] > 0).all()


def test_albums_and_a_gallery_fitted_upgrade_from_the_app(app, album_photos, home, monkeypatch,
                                                           make_checkpoint):
    """Index a folder (albums from its sub-folders), see and filter albums; a model that does not
    line up with the gallery is refused and the fitted path offered; one click trains it, and
    the upgrade to it passes its pre-flight."""
    field = app.text_input(key="folder")  # off until the operator names import roots
    assert field.disabled and "GRACEFUL_IMPORT_ROOTS" in field.placeholder
    monkeypatch.setenv("GRACEFUL_IMPORT_ROOTS", str(album_photos.parent))
    app.run()
    app.text_input(key="folder").set_value("/etc").run()
    app.button(key="index-folder").click().run()
    assert "/etc is outside the folders this server may read" in text_of(app)
    app.text_input(key="folder").set_value(str(album_photos)).run()
    app.button(key="index-folder").click().run()
    assert not app.exception
    assert "Added 56 photos" in text_of(app) and "56 photos in 4 albums" in text_of(app)
    app.selectbox(key="gallery-album").set_value("sunflower (14)").run()
    assert all("sunflower" in m.value for m in app.markdown if "📁" in m.value)

    make_checkpoint(home / "models" / "not-aligned.safetensors", backbone="lite1", dim=1280,
                    name="not-aligned")
    page(app, "Models")
    app.selectbox(key="upgrade-target").set_value("not-aligned").run()
    app.button(key="upgrade").click().run()
    assert not app.exception
    out = text_of(app)
    assert "Pre-flight refused not-aligned" in out and "Next step: fit an upgrade" in out
    assert "Active model: **lite0**" in out
    app.button(key="fit-from-refusal").click().run()
    # the job's own message, set when it has returned (the report is written before the model)
    wait_for(app, "held-out photos in", timeout=300)
    app.run()  # the job may have finished while this page was half drawn: draw it whole again
    out = text_of(app)
    assert "held-out photos of 56" in out
    plan = next(d.value for d in app.dataframe if "path" in d.value.columns)
    paths = plan["path"].tolist()
    assert "lite1-fit-lite0" in out and "Upgrade plan" in out and "Recommended" in out
    assert paths[0] == "now (no change)" and {"queries", "transform", "backfill"} <= \
        {p.rstrip(" ★") for p in paths}
    assert {"lost@5", "NFR", "top-5", "photos embedded", "time"} <= set(plan.columns)
    table = next(d.value for d in app.dataframe if "can query this gallery" in d.value.columns)
    verdict = dict(zip(table["model"], table["can query this gallery"]))
    # measured by its fit on the held-out photos (not assumed from the shared space), and not
    # worse: the upgrade to it below passes the pre-flight that reuses this measurement
    assert verdict["lite1-fit-lite0"].startswith("yes, "), verdict
    assert "held-out photos" in verdict["lite1-fit-lite0"], verdict
    assert "not measured yet" in verdict["lite2-compat-lite0"]
    app.selectbox(key="upgrade-target").set_value("lite1-fit-lite0").run()
    app.button(key="upgrade").click().run()
    assert "Upgraded lite0 → lite1-fit-lite0" in text_of(app)
    # and the gallery-moving path, from the plan's button
    app.button(key="rollback").click().run()
    app.button(key="plan-transform").click().run()
    wait_for(app, "vectors into lite1-fit-lite0's space", timeout=120)
    assert "Active model: **lite1-fit-lite0** · gallery space **lite1-fit-lite0**" in text_of(app)

    # the Compare page: lost@k, and the queries that lost every right photo listed first
    page(app, "Compare")
    app.radio(key="cmp-source").set_value("Labelled folder").run()
    app.text_input(key="cmp-folder").set_value(str(album_photos)).run()
    app.button(key="cmp-run").click().run()
    assert not app.exception
    labels = [m.label for m in app.metric]
    assert "lost@5" in labels and "lost@10" in labels
    table = next(d.value for d in app.dataframe if "lost every right photo" in d.value.columns)
    flags = table["lost every right photo"].tolist()
    assert flags == sorted(flags, reverse=True)  # losers first


def test_a_bridge_from_the_models_page_then_fused_search(app, album_photos, home, monkeypatch):
    """An album-less gallery: the fit section builds a label-free bridge, its plan shows
    fidelity and kept-old per path, one click serves both generations fused, rollback leaves."""
    from search.api import Gallery

    monkeypatch.setenv("GRACEFUL_IMPORT_ROOTS", str(album_photos.parent))
    app.run()
    app.text_input(key="folder").set_value(str(album_photos)).run()
    app.button(key="index-folder").click().run()
    assert "Added 56 photos" in text_of(app)
    g = Gallery.open(home)
    g.core.catalog.images.set_album([r[0] for r in g.core.catalog.conn.db.execute("SELECT id FROM images")], None)
    g.close()
    page(app, "Models")
    app.selectbox(key="fit-backbone").set_value("lite2").run()
    app.text_input(key="fit-name-lite2").set_value("br").run()
    app.button(key="fit-start").click().run()
    wait_for(app, "Upgrade plan", timeout=300)
    deadline = time.time() + 120  # the plan shows before the fit's model is saved: its buttons after
    while not any(b.key == "bridge-fused" for b in app.button):
        assert time.time() < deadline, text_of(app)
        time.sleep(0.5)
        app.run()
    plan = next(d.value for d in app.dataframe if "fidelity" in d.value.columns)
    assert {"kept old", "photos embedded", "time"} <= set(plan.columns)
    assert [p.split()[0] for p in plan["path"]] == ["keep", "queries", "transform", "fused", "backfill"]
    assert "cannot judge" in text_of(app)
    app.button(key="bridge-fused").click().run()
    wait_for(app, "(fused mode)", timeout=120)
    app.run()
    assert "serving mode **fused**" in text_of(app)
    app.button(key="rollback").click().run()
    assert "serving mode **native**" in text_of(app)


def upgraded_and_compared(photos: Path):
    """A snapshot builder: the 12 photos (3 albums) on lite0, upgraded to lite2-compat-lite0,
    the two compared on the same photos as labelled queries (the report the Compare page shows)."""
    def build(home: Path) -> None:
        from search.api import Gallery

        g = Gallery.open(home, create=True)
        try:
            g.add([photos])
            g.upgrade("lite2-compat-lite0")
            g.compare(photos, "lite0", "lite2-compat-lite0", 5)
        finally:
            g.close()
    return build


@pytest.fixture
def upgraded_home(gallery_snapshot, few_photos, home, monkeypatch) -> Path:
    from conftest import copy_gallery

    copy_gallery(gallery_snapshot("few-upgraded", upgraded_and_compared(few_photos)), home)
    monkeypatch.setenv("GRACEFUL_HOME", str(home))
    return home


def alone(name: str) -> AppTest:
    """One page's script, with no frame and no navigation around it."""
    return AppTest.from_file(str(ROOT / "search" / "ui" / "pages" / SCRIPTS[name]),
                             default_timeout=120)


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_each_page_runs_alone(upgraded_home, name):
    at = alone(name)
    at.run()
    assert not at.exception, at.exception
    assert at.header[0].value == name
    assert {"Gallery": "12 photos in 3 albums · active model **lite2-compat-lite0**",
            "Search": "Queries use **lite2-compat-lite0**",
            "Models": "Active model: **lite2-compat-lite0** · gallery space **lite0**",
            "Compare": "lite0 → lite2-compat-lite0 · 12 queries · top-5",
            "Maintenance": "Train a compatible model"}[name] in text_of(at)


def test_deep_links_to_similar_photos_and_a_compared_query(upgraded_home):
    from search.api import Gallery

    g = Gallery.open(upgraded_home)
    row = g.photos.list(0, 1)[0]
    names = [q["query"] for q in g.reports.comparison().queries]
    g.close()
    at = alone("Search")
    at.query_params["similar"] = row.sha256[:16]  # /search?similar=SHA
    at.run()
    assert not at.exception, at.exception
    assert "11 results · lite2-compat-lite0" in text_of(at)  # the photo itself left out

    at = alone("Compare")
    at.query_params["query"] = names[3]  # /compare?query=NAME
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="cmp-pick").value == names[3]
    at.selectbox(key="cmp-pick").set_value(names[5]).run()
    assert at.query_params["query"] == names[5]  # the address follows the query shown

    # a grid's "Similar" button opens the Search page's link
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    next(b for b in at.button if str(b.key).startswith("gallery-sim-")).click().run()
    assert not at.exception, at.exception
    assert at.header[0].value == "Search" and "11 results" in text_of(at)
