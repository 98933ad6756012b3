"""The gallery's saved reports (`reports/KIND-TIMESTAMP-TAG.json`): fits, comparisons, backfill
curves. Part of `GalleryCore`."""
from __future__ import annotations

import json
import time
from pathlib import Path


class Reports:
    """Saving and reading reports under `reports_dir` (a mixin of GalleryCore)."""

    reports_dir: Path

    def save_report(self, kind: str, tag: str, report: dict, path: Path | None = None) -> Path:
        """Write `report` as reports/KIND-TIMESTAMP-TAG.json, or over `path` (a report saved
        before), atomically; returns its path."""
        from models.fsutil import atomic_write_bytes

        safe = tag.replace(":", "_").replace("/", "_")
        path = path or self.reports_dir / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{safe}.json"
        atomic_write_bytes(path, json.dumps(report, indent=1, default=str).encode())
        return path

    def latest_report(self, kind: str) -> dict | None:
        """The newest reports/KIND-*.json, or None."""
        reports = sorted(self.reports_dir.glob(f"{kind}-*.json"),
                         key=lambda p: (p.stat().st_mtime, p.name))
        return json.loads(reports[-1].read_text()) if reports else None
