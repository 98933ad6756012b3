"""The Search page: by an uploaded photo, by text (models with a text tower), or by a gallery
photo: the deep link `/search?similar=SHA` (a sha256 prefix or an image id), which every
grid's "Similar" button opens."""
from __future__ import annotations

import streamlit as st

from search.thumbnails import preview
from search.ui.errors import guarded, md, opened_gallery
from search.ui.widgets import MAX_UPLOAD_BYTES, show_grid, thumbnail


def forget_similar() -> None:
    st.query_params.pop("similar", None)


def main() -> None:
    g = opened_gallery()
    st.header("Search")
    if (guarded(g.photos.count) or 0) == 0:
        st.info("The gallery is empty: add photos on the Gallery page first.")
        return
    model = guarded(g.models.embedder)
    if model is None:
        return
    st.caption(f"Queries use **{md(model.name)}** (space {md(model.space)})")
    k = st.slider("Results", 4, 48, 12, step=4, key="k")
    result = None
    # the newest query wins: a "Similar" link over a photo uploaded before, a new photo or text
    # over the link (which they take out of the address)
    up = st.file_uploader("Search by photo", key="query-upload",  # no `type=`: see the Gallery
                          on_change=forget_similar)
    text = st.text_input("…or describe what you are looking for", key="query-text",
                         on_change=forget_similar) if model.info.has_text else ""
    similar = st.query_params.get("similar")
    if similar:
        row = guarded(g.photos.row, similar)
        if row:
            shown = thumbnail(str(g.photos.path(row)))
            if shown:
                st.image(shown, width=160, caption=f"similar to #{row.id}")
            result = guarded(g.search, None, k, image=row.id, log=True)
    elif up is not None:
        data = up.getvalue()
        if len(data) > MAX_UPLOAD_BYTES:
            st.error("That file is too large.")
        else:
            shown = preview(data, 160)
            if shown:
                st.image(shown, width=160, caption="query")
            result = guarded(g.search, data, k, name=up.name, log=True)
    if text and not similar:
        result = guarded(g.search, None, k, text=text, log=True)
    if result is not None:
        st.subheader(f"{len(result.hits)} results · {md(result.model)} · "
                     f"{result.elapsed_ms:.0f} ms")
        show_grid([h.as_dict() for h in result.hits], key="results")


main()
