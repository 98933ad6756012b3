"""Wording the engine's messages and the faces share: durations as people read them, and the
default name of a fitted upgrade."""
from __future__ import annotations

import re


def duration_text(seconds: float) -> str:
    if seconds < 1:
        return "an instant"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


_FIT = re.compile(r"(?:.+?-)?fit(?:-(.+))?")  # a fit's default name: BACKBONE-fit[-ORIGIN][-N]
_GENERATION = re.compile(r"(?:(.*?)-)?(\d+)")


def fit_name(backbone: str, active: str | None) -> str:
    """The default name of an upgrade fitted to a gallery: `{backbone}-fit-{active model}`
    (`lite2-fit-lite0`). When the active model is itself a fit, the name counts generations
    from the model the gallery started with instead of nesting: `lite2-fit-lite0` ->
    `lite2-fit-lite0-2` -> `lite2-fit-lite0-3` (a fit named `fit` or `lite2-fit` ->
    `lite2-fit-2`); a fused model counts from its old half."""
    if not active:
        return f"{backbone}-fit"
    origin = active[len("fused:"):].split("+", 1)[0] if active.startswith("fused:") else active
    generation = 1
    while (fit := _FIT.fullmatch(origin)) is not None:
        origin = fit.group(1) or ""
        numbered = _GENERATION.fullmatch(origin)
        if numbered is not None:
            origin, generation = numbered.group(1) or "", max(generation, int(numbered.group(2)))
        generation += 1
    if generation == 1:
        return f"{backbone}-fit-{origin}"
    return f"{backbone}-fit-{origin}-{generation}" if origin else f"{backbone}-fit-{generation}"
