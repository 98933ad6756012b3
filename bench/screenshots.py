"""Refresh the README's screenshots (docs/screenshots/): runs the browser test with its
screenshots pointed there. The test itself writes to a temporary folder.

    python -m bench.screenshots
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    env = {**os.environ, "GRACEFUL_SCREENSHOTS": str(ROOT / "docs" / "screenshots")}
    return subprocess.call([sys.executable, "-m", "pytest", "-q", "-m", "slow", "-p",
                            "no:cacheprovider", str(ROOT / "tests" / "test_browser.py")],
                           cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
