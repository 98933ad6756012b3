"""Graceful: the Streamlit app. `streamlit run app.py`

The frame: page config, the one `Gallery` every session shares (search/ui/state.py; its calls
one at a time, faults shown as messages by search/ui/errors.guarded) and the navigation over
the pages, one script each in search/ui/pages/. The pages reach the engine through `Gallery`
and `search.jobs` only, like the CLI (docs/ARCHITECTURE.md, faces).
"""
from __future__ import annotations

import streamlit as st

from search.ui import PAGES, PAGES_DIR
from search.ui.errors import opened_gallery

st.set_page_config(page_title="Graceful", page_icon="🔎", layout="wide")


def main() -> None:
    st.sidebar.title("Graceful")
    st.sidebar.caption("Upgrade your image-search model without re-indexing.")
    pages = [st.Page(PAGES_DIR / script, title=title, url_path=url, icon=icon, default=n == 0)
             for n, (script, title, url, icon) in enumerate(PAGES)]
    nav = st.navigation(pages)
    g = opened_gallery()  # a gallery that cannot open: one message, no page
    st.sidebar.caption(f"Gallery: `{g.home}`")
    nav.run()


main()
