"""The app's one error path: every engine call goes through `guarded`, which shows a fault as
a one-line message (never a traceback) and the engine's notices as captions."""
from __future__ import annotations

import streamlit as st

from search.errors import HANDLED, GalleryError, friendly
from search.ui.state import gallery, state

_MD_SPECIAL = set("\\`*_[]<>#|~:$!")


def md(text) -> str:
    """User-provided text (album, model, file names, reasons) made inert for st.markdown and
    friends: the characters of markdown links and images, emphasis, code, HTML, directives
    (:red[...]) and LaTeX are backslash-escaped, so `![x](http://host/a.png)` shows as text and
    makes the browser fetch nothing."""
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in str(text))


def guarded(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` alone on the shared gallery; its result, or None after a message.
    A pre-flight refusal is no error here: it is kept in `state().refused` (what was measured
    and the next step), for the Models page to show."""
    g = None
    try:
        g = gallery()
        with g.exclusive():
            return fn(*args, **kwargs)
    except GalleryError as e:
        from search.api import PreflightRefused

        if isinstance(e, PreflightRefused):
            state().refused = e.result.as_dict()
        else:
            st.error(md(e))
    except HANDLED as e:  # full disk, permissions, a busy or damaged catalog
        line = friendly(e)
        st.error(md(line[0].upper() + line[1:]))
    except Exception as e:  # noqa: BLE001 - a user must never see a stack trace
        st.error(f"Something went wrong: {md(e)}")
    finally:
        for note in g.take_notices() if g is not None else []:
            st.caption(f"Note: {md(note)}")
    return None


def opened_gallery():
    """The shared gallery, or (one message, the page stops) why it cannot be opened."""
    g = guarded(gallery)
    if g is None:
        st.stop()
    return g
