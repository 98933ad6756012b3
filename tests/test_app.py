"""The Streamlit app's pages through streamlit.testing.v1.AppTest (real engine, real models)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def app(home, monkeypatch):
    monkeypatch.setenv("GRACEFUL_HOME", str(home))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception
    return at


def page(at: AppTest, name: str) -> AppTest:
    at.sidebar.radio[0].set_value(name).run()
    assert not at.exception, at.exception
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
    for name in ("Search", "Models", "Compare"):
        page(app, name)
    assert "upgrade the gallery's model first" in text_of(app)


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
    app.selectbox(key="train-backbone").set_value("lite1").run()
    app.button(key="train-start").click().run()
    wait_for(app, "need at least 16")


def test_generations_benchmark_runs_from_the_models_page(app, few_photos, tmp_path):
    from conftest import caltech_subset

    classes = ["airplanes", "Motorbikes", "sunflower"]
    train = caltech_subset(tmp_path / "train", "train", classes, 6)
    test = caltech_subset(tmp_path / "test", "test", classes, 4)
    app.file_uploader(key="uploads-0").set_value(
        [(f.name, f.read_bytes(), "image/jpeg") for f in sorted(few_photos.rglob("*.jpg"))]).run()
    app.button(key="add-uploads").click().run()
    page(app, "Models")
    app.text_input(key="gen-train").set_value(str(train)).run()
    app.text_input(key="gen-test").set_value(str(test)).run()
    app.selectbox(key="gen-kind").set_value("hetero").run()
    app.button(key="gen-start").click().run()
    wait_for(app, "bench-hetero-ce", timeout=300)
    table = app.dataframe[-1].value
    assert list(table["query_model"]) == ["lite2 (cloud, same model)", "lite1 compatible with cloud",
                                          "lite0 compatible with cloud"]
    assert (table["images_per_s"] > 0).all()
