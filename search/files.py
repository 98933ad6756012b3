"""Which files a user's paths name: folders walked (sorted, hidden entries and unreadable folders
passed over), regular files only, system folders refused. No model, no torch."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from .errors import GalleryError

SYSTEM_ROOTS = ("/proc", "/sys", "/dev")  # not /run: USB drives mount under /run/media


def _is_system_path(p: Path) -> bool:
    resolved = str(p.resolve())
    return any(resolved == root or resolved.startswith(root + "/") for root in SYSTEM_ROOTS)


def collect_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand folders (recursively, sorted, hidden entries skipped); regular files only.
    Missing paths, system folders (/proc, /sys, /dev) and non-regular files named on
    the command line are refused before anything is written."""
    files: list[Path] = []
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise GalleryError(f"no such file or folder: {', '.join(missing)}")
    system = [str(p) for p in paths if _is_system_path(p)]
    if system:
        raise GalleryError(f"{', '.join(system)}: a system folder or device, not photos")
    for p in paths:
        if p.is_dir():
            files.extend(_walk(p))
        elif p.is_file():
            files.append(p)
        else:
            raise GalleryError(f"{p}: not a regular file (a device, pipe or socket)")
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


