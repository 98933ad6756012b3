"""End to end in a real headless Chromium (Debian's), driven by Playwright: start the app on a
free localhost port, upload photos, search, upgrade, compare, roll back, fit and transform.
Screenshots go to a temporary folder; README's (docs/screenshots/) come from a realistic gallery
by `python -m bench.screenshots`, which reuses this module's app runner."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "docs" / "screenshots"  # refreshed by bench/screenshots.py, never by the test
SHOT_NAMES = ["0-empty.png", "1-gallery.png", "2-search.png", "3-models.png", "4-compare.png",
              "5-fitted.png"]
# Before each screenshot: the test only checks that they are written (README's come from
# bench/screenshots.py), so images may still be loading; a wait is idle time of the whole suite.
SETTLE_MS = 300
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppDidNotStart(RuntimeError):
    pass


APP_PIDS: dict[str, int] = {}  # the server process of each running_app URL


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def running_app(home: Path, import_root: Path):
    """`streamlit run app.py` on a free 127.0.0.1 port with GRACEFUL_HOME=home, reading server
    folders under import_root; yields its URL, stops it after."""
    port = free_port()
    env = {**os.environ, "GRACEFUL_HOME": str(home),
           "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
           "GRACEFUL_IMPORT_ROOTS": str(import_root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    APP_PIDS[url] = proc.pid
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.3)
        else:
            proc.kill()
            raise AppDidNotStart("the app did not start: " + proc.stdout.read().decode()[-2000:])
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


CHROMIUM_MISSING = ("Debian's chromium is required for the browser walk-through "
                    "(apt-get install chromium)")


@pytest.fixture
def server(home, album_photos):
    if not shutil.which("chromium"):
        pytest.fail(CHROMIUM_MISSING)
    with running_app(home, album_photos.parent) as url:
        yield url


def test_browser_upload_search_upgrade_compare_rollback(server, few_photos, album_photos, tmp_path):
    shots = tmp_path / "screenshots"
    tracked = {f.name: f.stat().st_mtime_ns for f in SHOTS.glob("*.png")}
    walk_through(server, few_photos, album_photos, shots)
    for name in SHOT_NAMES:  # written where it was told ...
        assert (shots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    # ... and not into the checkout (python -m bench.screenshots refreshes those)
    assert {f.name: f.stat().st_mtime_ns for f in SHOTS.glob("*.png")} == tracked


def walk_through(server: str, few_photos: Path, album_photos: Path, shots: Path) -> None:
    """The whole tour in a fresh gallery: 12 uploads (few_photos), search, upgrade, compare,
    rollback, the 56 album photos indexed from the server, a lite0 head fitted to them and
    its gallery transform; screenshots SHOT_NAMES into `shots`."""
    from playwright.sync_api import expect, sync_playwright

    shots.mkdir(parents=True, exist_ok=True)
    photos = sorted(few_photos.rglob("*.jpg"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        expect.set_options(timeout=60_000)
        page.goto(server)
        expect(page.get_by_text("Welcome to Graceful.")).to_be_visible()
        expect(page.get_by_text(re.compile(r"^Drop photos here"))).to_be_visible()
        page.wait_for_timeout(SETTLE_MS)
        page.screenshot(path=shots / "0-empty.png")

        sidebar = page.get_by_test_id("stSidebar")

        def go(name: str) -> None:
            sidebar.get_by_text(name, exact=True).click()
            expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible()

        def until(pattern: str, timeout: float = 300) -> None:
            """A background job's outcome on the Models page: redrawn every 10 s until it shows
            (a page left alone on a busy machine can miss the job's last progress tick)."""
            deadline = time.time() + timeout
            while True:
                try:
                    expect(page.get_by_text(re.compile(pattern)).first).to_be_visible(timeout=10_000)
                    return
                except AssertionError:
                    if time.time() > deadline:
                        raise
                    go("Search")
                    go("Models")

        page.locator("input[type=file]").first.set_input_files([str(f) for f in photos])
        page.get_by_role("button", name=re.compile(r"Add 12 photos")).click()
        expect(page.get_by_text(re.compile(r"Added 12 photos"))).to_be_visible()
        expect(page.get_by_text("12 photos · active model")).to_be_visible()
        page.wait_for_timeout(SETTLE_MS)  # thumbnails
        page.screenshot(path=shots / "1-gallery.png", full_page=True)

        go("Search")
        uploader = page.get_by_test_id("stFileUploader").filter(has_text="Search by photo")
        uploader.locator("input[type=file]").set_input_files(str(photos[0]))
        expect(page.get_by_text(re.compile(r"12 results · lite0"))).to_be_visible()
        page.wait_for_timeout(SETTLE_MS)
        page.screenshot(path=shots / "2-search.png", full_page=True)
        # a result's "Similar" opens the Search page's deep link for that photo
        page.get_by_role("button", name="Similar").first.click()
        expect(page.get_by_text(re.compile(r"11 results · lite0"))).to_be_visible()
        assert re.search(r"/search\?similar=[0-9a-f]{16}$", page.url), page.url

        go("Models")
        page.get_by_role("button", name="Upgrade", exact=True).click()
        expect(page.get_by_text(re.compile(r"Upgraded lite0 → lite2-compat-lite0"))).to_be_visible()
        expect(page.get_by_text(re.compile(r"Pre-flight passed"))).to_be_visible()
        page.screenshot(path=shots / "3-models.png", full_page=True)

        go("Compare")
        page.get_by_role("button", name="Run comparison").click()
        expect(page.get_by_text(re.compile(r"lite0 → lite2-compat-lite0 · 1 queries"))).to_be_visible()
        page.wait_for_timeout(SETTLE_MS)
        page.screenshot(path=shots / "4-compare.png", full_page=True)

        go("Models")
        page.get_by_role("button", name=re.compile(r"Roll back to lite0")).click()
        expect(page.get_by_text(re.compile(r"Rolled back lite2-compat-lite0 → lite0"))).to_be_visible()

        # albums from a server folder, then an upgrade fitted to this gallery, in one click
        go("Gallery")
        page.get_by_text("Add photos", exact=True).click()  # the expander is closed once photos exist
        field = page.get_by_label(re.compile(r"index a folder on the server"))
        field.fill(str(album_photos))
        field.press("Enter")
        page.get_by_role("button", name="Index folder").click()
        expect(page.get_by_text(re.compile(r"Added 56 photos"))).to_be_visible()
        expect(page.get_by_text(re.compile(r"68 photos in 4 albums"))).to_be_visible()
        # the gallery-moving path: a head on lite0 learned from the stored vectors and the
        # albums (the fit's job, report and plan in the page; fits that decode photos with a
        # new backbone are AppTest's and the CLI's: tests/test_app.py, tests/test_fit.py)
        go("Models")
        page.locator(".st-key-fit-backbone").get_by_test_id("stSelectbox").click()
        page.keyboard.type("lite0")
        page.keyboard.press("Enter")
        expect(page.get_by_text(re.compile(r"no photo is decoded"))).to_be_visible()
        page.get_by_role("button", name="Train an upgrade for this gallery").click()
        until(r"lite0-fit-lite0: \w+.* held-out photos in|lite0-fit-lite0\*\* \(pct on lite0\)"
              r"|lite0-fit-lite0 \(pct on lite0\)")
        go("Search")
        go("Models")  # a full rerun lists the new model
        expect(page.get_by_text(re.compile(r"held-out photos of 68"))).to_be_visible()
        plan = page.get_by_text(re.compile(r"Upgrade plan")).first
        expect(plan).to_be_visible()
        expect(page.get_by_text(re.compile(r"Recommended: |Keep the current model")).first
               ).to_be_visible()
        # the fit report and its plan sit below the fold of Streamlit's scrolling main area
        plan.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(SETTLE_MS)  # the chart
        page.screenshot(path=shots / "5-fitted.png")
        go("Search")
        go("Models")
        page.get_by_role("button", name="Transform the gallery").click()
        expect(page.get_by_text(re.compile(r"moved \d+ vectors into lite0-fit-lite0's space")).first
               ).to_be_visible(timeout=120_000)
        go("Search")
        go("Models")
        expect(page.get_by_text(re.compile(r"gallery space lite0-fit-lite0")).first).to_be_visible()
        # the check runs and reports (the label-free bridge and fused search from the Models page
        # are AppTest's: tests/test_app.py)
        go("Maintenance")
        page.get_by_role("button", name="Check", exact=True).click()
        expect(page.get_by_text(re.compile(r"The gallery is whole\.|problems found")).first
               ).to_be_visible()
        expect(page.get_by_text("Traceback")).to_have_count(0)
        # a page left open costs the server nothing once its jobs ended (their progress polled
        # every second, with a full garbage collection each time: 0.29 cores on a Models page)
        pid = APP_PIDS.get(server)
        if pid is not None:
            go("Models")
            page.wait_for_timeout(2000)
            before = cpu_seconds(pid)
            page.wait_for_timeout(4000)  # long enough that one collection of Python's own
            idle = (cpu_seconds(pid) - before) / 4  # (~0.3 s with torch loaded) stays under
            assert idle < 0.1, f"the app's server used {idle:.2f} cores with a page open, idle"
        browser.close()
