"""Which files a user's paths name: folders walked (sorted, hidden entries and unreadable folders
passed over), regular files only, system folders refused. No model, no torch."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from models.settings import Settings

from search.errors import GalleryError

SYSTEM_ROOTS = ("/proc", "/sys", "/dev")  # not /run: USB drives mount under /run/media


def _is_system_path(p: Path) -> bool:
    resolved = str(p.resolve())
    return any(resolved == root or resolved.startswith(root + "/") for root in SYSTEM_ROOTS)


def import_roots(settings: Settings | None = None) -> list[Path]:
    """Server folders the app may read photos from: none unless the operator lists them in
    GRACEFUL_IMPORT_ROOTS (separated by ':'), as photo servers do with their library paths."""
    raw = (settings or Settings.from_env()).import_roots
    return [Path(p).resolve() for p in raw.split(os.pathsep) if p.strip()]


def inside_roots(path: str | Path, roots: list[Path]) -> bool:
    """Whether `path`, every symlink on the way resolved, lies inside one of `roots`."""
    resolved = Path(path).resolve()
    return any(resolved == r or r in resolved.parents for r in roots)


def links_outside(folder: Path, roots: list[Path]) -> list[Path]:
    """Symlinks below `folder` (files or folders) that point outside `roots`."""
    found = []
    for parent, dirs, names in os.walk(folder, onerror=lambda e: None, followlinks=False):
        for name in sorted(dirs) + sorted(names):
            p = Path(parent) / name
            if p.is_symlink() and not inside_roots(p, roots):
                found.append(p)
    return found


def collect_files(paths: Iterable[str | Path], roots: list[Path] | None = None,
                  outside: list[Path] | None = None) -> list[Path]:
    """Expand folders (recursively, sorted, hidden entries skipped); regular files only.
    Missing paths, system folders (/proc, /sys, /dev) and non-regular files named on
    the command line are refused before anything is written. With `roots` (the app's import
    roots), a file that resolves outside them (a symlink out) is passed over and appended to
    `outside`."""
    files: list[Path] = []
    named = [Path(p) for p in paths]
    missing = [str(p) for p in named if not p.exists()]
    if missing:
        raise GalleryError(f"no such file or folder: {', '.join(missing)}")
    system = [str(p) for p in named if _is_system_path(p)]
    if system:
        raise GalleryError(f"{', '.join(system)}: a system folder or device, not photos")
    for p in named:
        if p.is_dir():
            files.extend(_walk(p))
        elif p.is_file():
            files.append(p)
        else:
            raise GalleryError(f"{p}: not a regular file (a device, pipe or socket)")
    if roots is not None:
        kept = [f for f in files if inside_roots(f, roots)]
        if outside is not None:
            outside.extend(f for f in files if f not in set(kept))
        files = kept
    return files


def _walk(root: Path) -> list[Path]:
    """Regular files below root, sorted; unreadable folders and hidden entries are passed over."""
    found: list[Path] = []
    for folder, dirs, names in os.walk(root, onerror=lambda e: None, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            f = Path(folder) / name
            if not name.startswith(".") and f.is_file():
                found.append(f)
    return sorted(found)


