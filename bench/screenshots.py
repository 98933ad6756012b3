"""Refresh the README's screenshots (docs/screenshots/*.png) from a realistic gallery, in one
command: a few thousand Caltech-101 train photos of every class indexed with the default lite0
(albums = the class folders), an upgrade fitted to that gallery on lite2 (its measured plan), a
comparison of a few hundred labelled test-split queries, and a label-free bridge to plain lite2;
then `streamlit run app.py` on that gallery, Debian's chromium driven by Playwright over every
page. The browser test (tests/test_browser.py) walks a 12-photo gallery and writes its own
screenshots to a temporary folder; this is what README shows.
Needs a source checkout, ../shared/data/caltech101 (or GRACEFUL_CALTECH) and `chromium` (with an
emoji font, e.g. Debian's fonts-noto-color-emoji, for the albums' folder icon).

    python -m bench.screenshots [--photos 2500] [--queries 303] [--out DIR] [--home DIR]

--home DIR keeps the prepared gallery there (and reuses it on the next run: the steps already
done are skipped); without it the gallery lives in a temporary folder, removed unless a step
fails. 28 minutes here from nothing, about a minute with a prepared --home (2 cores shared with
other jobs; docs/BENCHMARKS.md, section 6).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import CALTECH, ROOT

FIT = "lite2-fit-lite0"  # the upgrade fitted to the gallery (pct on lite2, albums as labels)
BRIDGE = "lite2-bridge"  # the label-free bridge to plain lite2
SEARCH_QUERY = ("test", "dalmatian")  # the Search page's query: a held-out photo of this class
WIDTH, HEIGHT, MAX_HEIGHT = 1280, 1000, 2200
MAX_BYTES = 400_000  # a PNG above this is stored with a 256-colour palette
MAIN_HEIGHT = """() => Math.max(document.body.scrollHeight, ...[...document.querySelectorAll(
    '[data-testid="stMain"], [data-testid="stAppViewContainer"]')].map(e => e.scrollHeight))"""
COMPARE_HEIGHT = 2300  # the summary down to the first query's two result grids
TO_TOP = """e => { const box = e.closest('[data-testid="stAlertContainer"]') || e;
    box.scrollIntoView({block: 'start'});
    let p = box.parentElement;
    const scrolls = q => q.scrollHeight > q.clientHeight
        && getComputedStyle(q).overflowY !== 'visible';
    while (p && !scrolls(p)) p = p.parentElement;
    if (p) p.scrollBy(0, -16); }"""
SHOTS = ["0-empty.png", "1-gallery.png", "2-search.png", "3-models.png", "4-compare.png",
         "5-fitted.png", "6-bridge.png", "7-maintenance.png"]


def round_robin(split: str, n: int) -> list[Path]:
    """n photos of `split`, one of each class in turn (sorted, deterministic): every class is
    represented, small classes run out first. The order is the gallery's: its first page shows
    many classes."""
    root = CALTECH / split
    if not root.is_dir():
        raise SystemExit(f"Caltech-101 not found at {CALTECH} (set GRACEFUL_CALTECH)")
    classes = [sorted(p for p in d.iterdir() if p.suffix.lower() == ".jpg")
               for d in sorted(root.iterdir()) if d.is_dir()]
    out: list[Path] = []
    for depth in range(max(map(len, classes))):
        for files in classes:
            if depth < len(files):
                out.append(files[depth])
                if len(out) == n:
                    return out
    return out


def stage_queries(dest: Path, n: int) -> Path:
    """A labelled query folder (ImageFolder) of n test-split photos, one class in turn."""
    for f in round_robin("test", n):
        (dest / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest / f.parent.name / f.name)
    return dest


class Steps:
    """The `graceful` CLI on one gallery home, each step timed."""

    def __init__(self, home: Path, threads: int):
        self.home, self.threads, self.times = home, threads, {}

    def cli(self, step: str, *args: str, echo: bool = True) -> str:
        cmd = [sys.executable, "-m", "search.cli", "--home", str(self.home), "--threads",
               str(self.threads), *args]
        shown = " ".join(args) if len(args) < 12 else " ".join(args[:3]) + f" … ({len(args)})"
        if echo:
            print(f"[{step}] graceful {shown}", flush=True)
        t0 = time.time()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
        self.times[step] = self.times.get(step, 0.0) + time.time() - t0
        if proc.returncode:
            print(proc.stdout, file=sys.stderr)
            raise SystemExit(f"[{step}] failed (exit {proc.returncode}); the gallery stays in "
                             f"{self.home}: rerun with --home {self.home} to resume")
        if echo:
            print(proc.stdout.rstrip(), flush=True)
        return proc.stdout

    def info(self) -> dict:
        return json.loads(self.cli("info", "info", "--json", echo=False))


def report_of(home: Path, kind: str, name: str) -> Path | None:
    """The newest reports/KIND-*.json naming model `name` (fit) or new model `name` (compare)."""
    found = []
    for p in (home / "reports").glob(f"{kind}-*.json"):
        r = json.loads(p.read_text())
        if (r.get("name") if kind == "fit" else r.get("summary", {}).get("new")) == name:
            found.append(p)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def make_newest(report: Path) -> None:
    """The Models page shows the newest fit report: make this one the newest."""
    now = time.time()
    os.utime(report, (now, now))


def prepare(home: Path, photos: int, queries: Path, threads: int) -> Steps:
    """The gallery, its fitted upgrade, a comparison and a bridge; steps already done in `home`
    are skipped. Leaves lite0 active (the walk-through upgrades in the app)."""
    s = Steps(home, threads)
    if (home / "catalog.db").is_file() and s.info().get("active_model") not in (None, "lite0"):
        s.cli("rollback", "rollback")  # a reused gallery: back to lite0 before anything else
    files = round_robin("train", photos)
    s.cli("index", "index", "--workers", "2", *map(str, files))  # album: each photo's folder
    if not (home / "models" / f"{FIT}.safetensors").is_file():
        s.cli("fit", "train", "--from-gallery", "--backbone", "lite2", "--out", FIT)
    if report_of(home, "compare", FIT) is None:
        if s.info().get("active_model") != FIT:
            s.cli("compare", "upgrade", FIT)
        s.cli("compare", "compare", "--old", "lite0", "--new", FIT, "--queries", str(queries),
              "-k", "10")
    if s.info().get("active_model") != "lite0":
        s.cli("rollback", "rollback")
    if not (home / "models" / f"{BRIDGE}.safetensors").is_file() and \
            report_of(home, "fit", BRIDGE) is None:
        s.cli("bridge", "train", "--from-gallery", "--backbone", "lite2", "--method", "bridge",
              "--out", BRIDGE)
    return s


def shrink(png: Path) -> None:
    """Keep a screenshot under MAX_BYTES: a 256-colour palette (photos dithered) when above."""
    if png.stat().st_size <= MAX_BYTES:
        return
    from PIL import Image

    with Image.open(png) as im:
        small = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    small.save(png, optimize=True)


def walk(url: str, home: Path, photos: int, queries: int, out: Path) -> None:
    """Every page of the app on the prepared gallery; SHOTS into `out`."""
    from playwright.sync_api import expect, sync_playwright
    from test_browser import FLAGS

    out.mkdir(parents=True, exist_ok=True)
    query = sorted((CALTECH / SEARCH_QUERY[0] / SEARCH_QUERY[1]).glob("*.jpg"))[-1]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        page.set_default_timeout(240_000)
        expect.set_options(timeout=120_000)
        sidebar = page.get_by_test_id("stSidebar")

        def go(name: str) -> None:
            sidebar.get_by_text(name, exact=True).click()
            expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible()

        def shot(name: str, height: int | str = HEIGHT, top=None, settle_ms: int = 1500) -> None:
            """The window `height` px tall ("page": grown to the page's height; Streamlit scrolls
            its main area inside the window, so Playwright's full_page sees one window's worth),
            scrolled so that `top` (a locator) starts the picture."""
            page.mouse.move(WIDTH - 10, 10)  # off the sidebar (its collapse arrow shows on hover)
            page.wait_for_timeout(settle_ms)  # thumbnails, charts
            expect(page.get_by_text("Traceback")).to_have_count(0)
            if height == "page":
                height = min(max(HEIGHT, page.evaluate(MAIN_HEIGHT)), MAX_HEIGHT)
            page.set_viewport_size({"width": WIDTH, "height": int(height)})
            page.wait_for_timeout(1000)
            if top is not None:
                top.evaluate(TO_TOP)
                page.wait_for_timeout(1000)
            page.screenshot(path=out / name)
            page.set_viewport_size({"width": WIDTH, "height": HEIGHT})
            shrink(out / name)
            print(f"[shots] {out / name} ({(out / name).stat().st_size // 1024} KB)", flush=True)

        page.goto(url)
        expect(page.get_by_text(re.compile(rf"^{photos} photos in \d+ albums"))
               .first).to_be_visible()
        shot("1-gallery.png", "page", settle_ms=4000)

        go("Search")
        uploader = page.get_by_test_id("stFileUploader").filter(has_text="Search by photo")
        uploader.locator("input[type=file]").set_input_files(str(query))
        expect(page.get_by_text(re.compile(r"12 results · lite0"))).to_be_visible()
        shot("2-search.png", "page", settle_ms=3000)

        go("Models")  # one click: the pre-flight, then the switch
        page.locator(".st-key-upgrade-target").get_by_test_id("stSelectbox").click()
        page.keyboard.type(FIT)
        page.keyboard.press("Enter")
        page.get_by_role("button", name="Upgrade", exact=True).click()
        expect(page.get_by_text(re.compile(rf"Upgraded lite0 → {FIT}"))).to_be_visible()
        expect(page.get_by_text(re.compile(r"Pre-flight passed"))).to_be_visible()
        shot("3-models.png")

        go("Compare")  # the comparison prepare() ran, its first query side by side
        summary = page.get_by_text(re.compile(rf"lite0 → {FIT} · {queries} queries"))
        expect(summary).to_be_visible()
        shot("4-compare.png", COMPARE_HEIGHT, top=summary, settle_ms=3000)

        go("Models")  # the fitted upgrade's report: its verdict, its plan, every path measured
        verdict = page.get_by_text(re.compile(rf"{FIT} \(pct on lite2\)")).first
        expect(verdict).to_be_visible()
        shot("5-fitted.png", top=verdict, settle_ms=2500)

        bridge = report_of(home, "fit", BRIDGE)
        if bridge is not None:
            make_newest(bridge)
            go("Search")
            go("Models")
            found = page.get_by_text(re.compile(r"\(bridge lite0 ↔ lite2")).first
            expect(found).to_be_visible()
            shot("6-bridge.png", top=page.get_by_text("Fit an upgrade to this gallery",
                                                      exact=True))

        go("Maintenance")
        page.get_by_role("button", name="Check", exact=True).click()
        expect(page.get_by_text(re.compile(r"The gallery is whole\.|problems found")).first
               ).to_be_visible()
        shot("7-maintenance.png")
        browser.close()


def walk_empty(url: str, out: Path) -> None:
    """A new gallery's welcome (0-empty.png)."""
    from playwright.sync_api import expect, sync_playwright
    from test_browser import FLAGS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
        page = browser.new_page(viewport={"width": WIDTH, "height": 720})
        page.goto(url)
        expect(page.get_by_text("Welcome to Graceful.")).to_be_visible(timeout=120_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=out / "0-empty.png")
        browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=2500,
                        help="Caltech-101 train photos in the gallery, every class in turn")
    parser.add_argument("--queries", type=int, default=303,
                        help="labelled test-split photos the comparison runs (3 per class)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots",
                        help="folder for the PNGs (default: docs/screenshots/)")
    parser.add_argument("--home", type=Path, default=None,
                        help="gallery home to prepare, or reuse (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=2, help="GRACEFUL_THREADS (default 2)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))  # the browser test's app runner and flags
    from test_browser import CHROMIUM_MISSING, running_app

    if not shutil.which("chromium"):
        print(CHROMIUM_MISSING, file=sys.stderr)
        return 1
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="graceful-shots-"))
    home = args.home or tmp / "gallery"
    try:
        queries = stage_queries(tmp / "queries", args.queries)
        steps = prepare(home.resolve(), args.photos, queries, args.threads)
        fit = report_of(home, "fit", FIT)
        if fit is None:
            raise SystemExit(f"no fit report for {FIT} in {home}/reports")
        make_newest(fit)  # the Models page shows the fitted upgrade first, the bridge after
        t1 = time.time()
        os.environ["GRACEFUL_THREADS"] = str(args.threads)
        with running_app(home, tmp) as url:
            walk(url, home, args.photos, args.queries, args.out)
        with running_app(tmp / "empty", tmp) as url:
            walk_empty(url, args.out)
        steps.times["screenshots"] = time.time() - t1
    except BaseException:
        if args.home is None:
            print(f"the gallery stays in {home}: rerun with --home {home} to resume",
                  file=sys.stderr)
        raise
    shutil.rmtree(tmp, ignore_errors=True)  # the queries, and the gallery unless --home
    total = time.time() - t0
    print("times: " + ", ".join(f"{k} {v:.0f} s" for k, v in steps.times.items())
          + f"; total {total / 60:.1f} min")
    for name in SHOTS:
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
