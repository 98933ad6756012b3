"""`graceful check [--repair]`: is the gallery whole, and what can be rebuilt?

Checks: SQLite's integrity check of the catalog; every stored photo present and matching its
hash; each space's index file against its checksum and against the catalog; models the
gallery refers to (active, history, registered) still loadable. With `repair`: index files are
rebuilt from the catalog, and missing or damaged store files are re-imported from the path the
photo was indexed from when that file still holds the same bytes. What cannot be fixed is listed
with the next step.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from models.progress import Progress

from search.core import GalleryCore
from search.errors import GalleryError


@dataclass
class Finding:
    check: str
    status: str  # ok | problem | repaired
    detail: str
    next_step: str = ""


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.status != "problem" for f in self.findings)

    def add(self, check: str, status: str, detail: str, next_step: str = "") -> None:
        self.findings.append(Finding(check, status, detail, next_step))

    def as_dict(self) -> dict:
        return {"ok": self.ok, "findings": [asdict(f) for f in self.findings],
                "problems": sum(f.status == "problem" for f in self.findings),
                "repaired": sum(f.status == "repaired" for f in self.findings)}


def _sha256_file(path: Path) -> str | None:
    """The sha256 of a regular file (opened non-blocking: a FIFO or device is None, never a
    hang), or None."""
    import os
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        h = hashlib.sha256()
        with os.fdopen(fd, "rb", closefd=False) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None
    finally:
        os.close(fd)


def _original_bytes(source: Path | None, sha256: str) -> bytes | None:
    """A photo's original file, if it is still a regular file of at most 200 MiB holding the
    same bytes (read once, so the bytes checked are the bytes restored)."""
    from models.imageio import BadImage, read_photo_file

    if source is None:
        return None
    try:
        data = read_photo_file(source)
    except BadImage:
        return None
    return data if hashlib.sha256(data).hexdigest() == sha256 else None


def check(gallery: GalleryCore, repair: bool = False,
          on_progress: Callable[[Progress], None] | None = None) -> CheckReport:
    report = CheckReport()
    cat = gallery.catalog
    result = cat.integrity_check()
    if result == ["ok"]:
        report.add("catalog", "ok", "SQLite integrity check passed")
    else:
        report.add("catalog", "problem", "; ".join(result[:5]),
                   "restore catalog.db from a backup (the photos in images/ are intact)")

    rows = cat.images.list_images(0, 1 << 62)
    state = Progress("check", total=len(rows))
    bad = []
    for n, row in enumerate(rows, 1):
        path = gallery.image_path(row)
        if _sha256_file(path) != row.sha256:
            bad.append(row)
        if on_progress and (n % 64 == 0 or n == len(rows)):
            on_progress(state.tick(n))
    if not bad:
        report.add("store", "ok", f"{len(rows)} photos present and matching their hashes")
    for row in bad:
        what = "missing" if not gallery.image_path(row).exists() else "damaged (hash mismatch)"
        source = Path(row.source) if row.source else None
        original = _original_bytes(source, row.sha256) if repair else None
        if original is not None:
            gallery.store.put(row.sha256, row.ext, original)
            report.add("store", "repaired", f"photo #{row.id} ({row.name}) was {what}: "
                       f"re-imported from {source}")
        else:
            gone = "its original" + (f" {source}" if source else "") + \
                (" is gone or changed" if source else " is unknown")
            report.add("store", "problem", f"photo #{row.id} ({row.name}) is {what}; {gone}",
                       "index the original photo again (graceful index PATH) to restore it"
                       if not repair else "index the original photo again to restore it, or "
                       "accept that this photo cannot be shown or re-embedded")

    spaces = sorted({r["space"] for r in cat.vectors.vector_counts()})
    store = gallery.vector_store
    verdicts = _verify_store(gallery, spaces, repair, report)  # spaces in order; None: damaged
    for space, why in (verdicts or {}).items():
        served = cat.vectors.count_served(space)
        if why is None:
            report.add("index", "ok", f"{space}: {served} vectors ({store.kind})")
        elif why == "missing" and space != gallery.space:
            # a space nothing searches yet (a bridge's sample, an old generation): its index
            # is a cache of the catalog, built when the space is first searched
            report.add("index", "ok", f"{space}: {served} vectors in the catalog, no "
                       f"{store.noun} yet (built when it is first searched)")
        elif repair:
            gallery.rebuild_index(space)
            report.add("index", "repaired", f"{space}: the {store.noun} was {why}: rebuilt from the catalog")
        else:
            report.add("index", "problem", f"{space}: the {store.noun} is {why}",
                       "graceful check --repair (rebuilds it from the catalog)")

    names = {m["name"] for m in cat.models.models()}
    active = gallery.active_model
    for name in sorted(names | set(cat.models.model_history()) | ({active} if active else set())):
        try:
            gallery.resolve_model(name)
        except GalleryError as e:
            role = "the active model" if name == active else "a model this gallery used"
            report.add("models", "problem", f"{name} ({role}) cannot be loaded: {e}",
                       "put its checkpoint back into the gallery's models/ folder"
                       + ("; until then `graceful rollback` switches to the previous model"
                          if name == active else ""))
    if not any(f.check == "models" for f in report.findings):
        report.add("models", "ok", f"{len(names)} models loadable")
    _check_temp_files(gallery, repair, report)
    return report


def _check_temp_files(gallery: GalleryCore, repair: bool, report: CheckReport) -> None:
    """Temp files of a save killed before its rename (a fit's checkpoint) in models/."""
    from models.fsutil import remove_stale_temp_files

    stale = remove_stale_temp_files(gallery.models_dir, dry_run=not repair)
    if not stale:
        return
    size = sum(p.stat().st_size for p in stale if p.exists()) if not repair else 0
    names = ", ".join(p.name for p in stale[:3]) + (" …" if len(stale) > 3 else "")
    if repair:
        report.add("models", "repaired", f"removed {len(stale)} temp file(s) left in models/ by a "
                   f"save that was killed ({names})")
    else:
        report.add("models", "problem", f"{len(stale)} temp file(s) in models/ left by a save that "
                   f"was killed ({names}; {size / 2**20:.1f} MiB)",
                   "graceful check --repair removes them (so does the next fit)")


def _verify_store(gallery: GalleryCore, spaces: list[str], repair: bool,
                  report: CheckReport) -> dict[str, str | None] | None:
    """Each space's verdict from the vector store, or None when the store as a whole was found
    damaged (a Milvus Lite file that cannot be read, or holds vectors or an index Graceful did
    not write): reported, or with `repair` moved aside and every space rebuilt from the
    catalog."""
    store = gallery.vector_store
    damaged = None
    if store.kind == "milvus":
        from search.storage.milvus_lite import LiteDamaged
    else:
        LiteDamaged = ()  # type: ignore[misc,assignment]  # noqa: N806 (nothing to catch)
    verdicts: dict[str, str | None] = {}
    try:
        for space in spaces:
            verdicts[space] = store.verify(gallery.catalog, space)
    except LiteDamaged as e:
        damaged = e
    if damaged is None:
        return verdicts
    uri = store.describe().get("uri", "")
    if not repair:
        report.add("index", "problem", f"the Milvus Lite file {uri} is damaged ({damaged.reason})",
                   "graceful check --repair (moves it aside to "
                   f"{Path(uri).name}.damaged-<time> and rebuilds the collections from the "
                   "catalog, which holds every vector)")
        return None
    aside = store.set_aside()  # type: ignore[attr-defined]  # Milvus Lite's
    for space in spaces:
        gallery.rebuild_index(space)
    report.add("index", "repaired", f"the Milvus Lite file {uri} was damaged ({damaged.reason}): "
               f"moved it aside to {aside or '(nothing there)'}, rebuilt {', '.join(spaces)} "
               "from the catalog")
    return None
