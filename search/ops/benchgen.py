"""`graceful bench chain|hetero`: the generations benchmarks (models.evaluation.generations) on a
labelled train/test pair, saved as the gallery's reports/bench-KIND-LOSS.json."""
from __future__ import annotations

import json
from pathlib import Path

from search.core import GalleryCore
from search.errors import GalleryError


def bench_generations(gallery: GalleryCore, kind: str, train: Path, test: Path,
                      loss: str = "ce") -> dict:
    from models.evaluation.generations import GenConfig, chain, hetero

    if kind not in ("chain", "hetero"):
        raise GalleryError(f"unknown benchmark {kind!r}: chain or hetero")
    cfg = GenConfig(Path(train), Path(test), gallery.cache_dir, loss=loss, progress=False)
    result = {**(chain if kind == "chain" else hetero)(cfg), "loss": loss}
    gallery.save_report("bench", kind, result, gallery.reports_dir / f"bench-{kind}-{loss}.json")
    return result


def bench_reports(gallery: GalleryCore) -> dict[str, dict]:
    """The saved `bench_generations` results by name (bench-KIND-LOSS), oldest name first."""
    return {p.stem: json.loads(p.read_text())
            for p in sorted(gallery.reports_dir.glob("bench-*.json"))}
