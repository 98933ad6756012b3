"""Wording the engine's messages and the faces share: durations as people read them, and the
default name of a fitted upgrade."""
from __future__ import annotations


def duration_text(seconds: float) -> str:
    if seconds < 1:
        return "an instant"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def fit_name(backbone: str, active: str | None) -> str:
    """The default name of an upgrade fitted to a gallery: `{backbone}-fit-{active model}`."""
    return f"{backbone}-fit-{active}"
