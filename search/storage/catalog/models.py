"""The models table and the model state: registered models, the active model, its history
and the space each model serves in."""
from __future__ import annotations

import json
import time

from .db import Connection, Repo
from .state import StateRepo


class ModelsRepo(Repo):
    """Built on the state repository (`state`), which keeps the model state's keys."""

    def __init__(self, conn: Connection, state: StateRepo):
        super().__init__(conn)
        self.state = state

    @property
    def active_model(self) -> str | None:
        return self.state.get_state(self.state.ACTIVE_MODEL)

    def set_active_model(self, name: str) -> None:
        self.state.set_state(self.state.ACTIVE_MODEL, name)
        self.db.conn.execute("UPDATE models SET activated_at = ? WHERE name = ?", [time.time(), name])

    def model_history(self) -> list[str]:
        return self.state.get_state(self.state.MODEL_HISTORY, [])

    def set_model_history(self, history: list[str]) -> None:
        self.state.set_state(self.state.MODEL_HISTORY, list(history))

    def serving_space(self, model: str) -> str | None:
        """The space `model` searches and writes when active, if a transform gave it its own."""
        return self.state.get_state(self.state.SERVING_SPACES, {}).get(model)

    def set_serving_space(self, model: str, space: str | None) -> None:
        self.state.set_state_entry(self.state.SERVING_SPACES, model, space)

    # -- models ---------------------------------------------------------------------------
    def register_model(self, info: dict, source: str) -> None:
        self.db.execute(
            "INSERT INTO models (name, space, dim, kind, compatible_with, source, added_at, "
            "activated_at, info) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?) "
            "ON CONFLICT(name) DO NOTHING",
            [info["name"], info["space"], info["dim"], info["kind"],
             json.dumps(list(info.get("compatible_with", []))), source, time.time(),
             json.dumps({k: v for k, v in info.items() if k != "extra"})])

    MODEL_COLUMNS = ("name", "space", "dim", "kind", "compatible_with", "source", "added_at",
                     "activated_at")

    def models(self) -> list[dict]:
        rows = self.db.execute(f"SELECT {', '.join(self.MODEL_COLUMNS)} FROM models "
                               "ORDER BY added_at").fetchall()
        return [self._model_row(r) for r in rows]

    def model(self, name: str) -> dict | None:
        row = self.db.execute(f"SELECT {', '.join(self.MODEL_COLUMNS)} FROM models WHERE name = ?",
                              [name]).fetchone()
        return None if row is None else self._model_row(row)

    def _model_row(self, row) -> dict:
        m = dict(zip(self.MODEL_COLUMNS, row))
        m["compatible_with"] = json.loads(m["compatible_with"])
        return m
