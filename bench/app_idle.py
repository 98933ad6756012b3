"""The app's server CPU while a page stays open and nothing happens (docs/BENCHMARKS.md section 19).

    python -m bench.app_idle --page models --seconds 20 [--photos DIR] [--json FILE]

A gallery of DIR's photos (default: Caltech-101 test/sunflower) indexed with the default model,
`streamlit run app.py` on 127.0.0.1, Debian's chromium on the page, then the server process's
CPU (utime + stime from /proc) over `--seconds`. The app and the browser are stopped after.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import CALTECH, ROOT, write_json


def measure(photos: Path, page_path: str, seconds: float) -> dict:
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT / "tests"))
    from test_browser import APP_PIDS, CHROMIUM_MISSING, cpu_seconds, running_app

    chromium = shutil.which("chromium")
    if not chromium:
        raise SystemExit(CHROMIUM_MISSING)
    home = Path(tempfile.mkdtemp(prefix="graceful-idle-"))
    try:
        env = {**os.environ, "GRACEFUL_HOME": str(home)}
        subprocess.run([sys.executable, "-m", "search.cli", "index", str(photos)], cwd=ROOT,
                       env=env, check=True, capture_output=True)
        with running_app(home, photos.parent) as url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            page = browser.new_page()
            page.goto(url)  # the Gallery page first: the app loads the gallery and its model
            page.wait_for_timeout(5000)
            page.goto(f"{url}/{page_path}")
            page.wait_for_timeout(5000)
            pid = APP_PIDS[url]
            before, t0 = cpu_seconds(pid), time.monotonic()
            page.wait_for_timeout(seconds * 1000)
            used, took = cpu_seconds(pid) - before, time.monotonic() - t0
            browser.close()
        return {"page": page_path, "photos": len(list(photos.iterdir())), "seconds": round(took, 1),
                "server_cpu_seconds": round(used, 2), "cores": round(used / took, 3)}
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--page", default="models", help="the page's URL path (models, search, ...)")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--photos", type=Path, default=CALTECH / "test" / "sunflower")
    ap.add_argument("--json")
    args = ap.parse_args()
    result = measure(args.photos, args.page, args.seconds)
    print(f"server CPU with /{result['page']} open and idle: {result['cores']:.3f} cores "
          f"({result['server_cpu_seconds']} s of CPU in {result['seconds']} s)")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
