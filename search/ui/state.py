"""The app's one session-state object, and the engine that every session of the process
shares: one `Gallery` (its calls one at a time, see errors.guarded) and one job runner."""
from __future__ import annotations

from dataclasses import dataclass, field

import streamlit as st

from search.api import Gallery, default_home
from search.jobs import JobRunner
from search.runtime import configure_threads


@dataclass
class UIState:
    """What a session remembers between reruns; widgets keep their values under their keys."""
    flash: list[tuple[str, str]] = field(default_factory=list)  # shown after the next rerun
    ingest_result: dict | None = None  # the last ingest's outcome, shown after its rerun
    upload_round: int = 0  # part of the uploader's key: a new round empties it
    refused: dict | None = None  # the last upgrade its pre-flight refused: what was measured
    report: dict | None = None  # the comparison run in this session (else the latest saved)


def state() -> UIState:
    if "ui" not in st.session_state:
        st.session_state["ui"] = UIState()
    return st.session_state["ui"]


@st.cache_resource
def engine(home: str) -> Gallery:
    configure_threads()
    return Gallery.open(home, create=True)


def gallery() -> Gallery:
    """The gallery at GRACEFUL_HOME (else the default home), opened once per process."""
    return engine(str(default_home()))


@st.cache_resource
def job_runner() -> JobRunner:
    return JobRunner()
