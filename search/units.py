"""Durations and counts as people read them (the engine's messages and the faces share these)."""
from __future__ import annotations


def duration_text(seconds: float) -> str:
    if seconds < 1:
        return "an instant"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
