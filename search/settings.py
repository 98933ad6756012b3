"""The engine's settings (every GRACEFUL_* variable, `models.settings.Settings`) and where a
gallery lives when nobody says: GRACEFUL_HOME; else, running from a source checkout, its
data/gallery/ (git-ignored); else the per-user data folder ($XDG_DATA_HOME/graceful/gallery,
~/.local/share/graceful/gallery), as rclip keeps its index."""
from __future__ import annotations

import os
from pathlib import Path

from models.settings import Settings

__all__ = ["Settings", "default_home"]

CHECKOUT = Path(__file__).resolve().parent.parent


def _in_checkout() -> bool:
    return (CHECKOUT / "pyproject.toml").is_file() and (CHECKOUT / ".git").exists()


def default_home(settings: Settings | None = None) -> Path:
    settings = settings or Settings.from_env()
    if settings.home:
        return settings.home
    if _in_checkout():
        return CHECKOUT / "data" / "gallery"
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "graceful" / "gallery"
