"""The Streamlit app (`streamlit run app.py`), a face like search/cli/: app.py is the frame
(page config, the cached Gallery, navigation); each page is a script of its own in pages/,
testable alone (`AppTest.from_file("search/ui/pages/search_page.py")`). Shared: state.py (the
one session-state object and the engine every session shares), errors.py (the one error path),
widgets.py (grid, job progress, messages, server folders), upgrades.py (the Models page's fit,
plan and refusal sections).

The faces reach the engine through `search.api.Gallery` and `search.jobs` only (and the base
modules: errors, units, render, thumbnails, runtime); they import no `models.*` and no engine
layer, and nothing in search/ imports them (tests/test_fast.py).

Deep links: each page has a URL path (`/search`, `/models`, ...); `/search?similar=SHA` searches
by a gallery photo (a sha256 prefix or an id), `/compare?query=NAME` opens a compared query."""
from __future__ import annotations

from pathlib import Path

PAGES_DIR = Path(__file__).resolve().parent / "pages"

# The sidebar's pages in order: (script in pages/, title, URL path, icon); the first is the home.
PAGES = [("gallery_page.py", "Gallery", "gallery", ":material/photo_library:"),
         ("search_page.py", "Search", "search", ":material/search:"),
         ("models_page.py", "Models", "models", ":material/upgrade:"),
         ("compare_page.py", "Compare", "compare", ":material/compare_arrows:"),
         ("maintenance_page.py", "Maintenance", "maintenance", ":material/build:")]


def page_script(url_path: str) -> str:
    """The script of the page at `url_path` (for st.switch_page), as an absolute path."""
    return str(next(PAGES_DIR / f for f, _, url, _ in PAGES if url == url_path))
