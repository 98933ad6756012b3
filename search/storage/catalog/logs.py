"""The events, query_log and jobs tables: what happened, what was searched, long jobs' progress."""
from __future__ import annotations

import json
import time
from typing import Iterator

from .db import Repo


class LogsRepo(Repo):
    def log_event(self, kind: str, **detail) -> None:
        self.db.execute("INSERT INTO events (at, kind, detail) VALUES (?, ?, ?)",
                        [time.time(), kind, json.dumps(detail)])

    # -- query log and jobs ---------------------------------------------------------------
    def log_query(self, model: str, kind: str, query_sha: str, query: str, k: int,
                  results: list[int]) -> None:
        self.db.conn.execute(
            "INSERT INTO query_log (at, model, kind, query_sha, query, k, results) "
            "VALUES (?,?,?,?,?,?,?)", [time.time(), model, kind, query_sha, query, k, json.dumps(results)])

    def logged_image_queries(self) -> Iterator[tuple[str, str]]:
        """(query label, query sha256) of logged image searches, newest first."""
        yield from self.db.execute(
            "SELECT query, query_sha FROM query_log WHERE kind = 'image' ORDER BY id DESC")

    def logged_results(self) -> Iterator[list[int]]:
        for (results,) in self.db.execute("SELECT results FROM query_log"):
            yield json.loads(results)

    def count_logged_queries(self) -> int:
        return self.db.execute("SELECT count(*) FROM query_log").fetchone()[0]

    def save_job(self, name: str, state: dict) -> None:
        self.db.conn.execute("INSERT INTO jobs (name, state, updated_at) VALUES (?, ?, ?) "
                             "ON CONFLICT(name) DO UPDATE SET state = excluded.state, "
                             "updated_at = excluded.updated_at",
                             [name, json.dumps(state), time.time()])
