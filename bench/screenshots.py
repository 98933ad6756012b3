"""Refresh the README's screenshots (docs/screenshots/*.png): the browser test's walk-through
(tests/test_browser.py: Debian's chromium driven by Playwright against `streamlit run app.py`)
on a fresh temporary gallery, writing into docs/screenshots/ instead of a temporary folder.
Needs a source checkout, ../shared/data/caltech101 (or GRACEFUL_CALTECH) and `chromium`.

    python -m bench.screenshots [--out DIR]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.common import ROOT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots",
                        help="folder for the PNGs (default: docs/screenshots/)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))  # the test's own helpers and photo subsets
    import shutil

    from conftest import ALBUM_CLASSES, caltech_subset
    from test_browser import CHROMIUM_MISSING, SHOT_NAMES, running_app, walk_through

    if not shutil.which("chromium"):
        print(CHROMIUM_MISSING, file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="graceful-shots-") as tmp:
        tmp = Path(tmp)
        # the same photos as the test's few_photos and album_photos fixtures
        few = caltech_subset(tmp / "few", "test", ["airplanes", "Motorbikes", "sunflower"], 4)
        albums = caltech_subset(tmp / "import" / "albums", "train", ALBUM_CLASSES, 14)
        with running_app(tmp / "gallery", albums.parent) as url:
            walk_through(url, few, albums, args.out)
    for name in SHOT_NAMES:
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
