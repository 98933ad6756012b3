"""The models table and the model state: registered models, the active model, its history
and the space each model serves in."""
from __future__ import annotations

import json
import time

from .state import StateRepo


class ModelsRepo(StateRepo):
    @property
    def active_model(self) -> str | None:
        return self.get_state(self.ACTIVE_MODEL)

    def set_active_model(self, name: str) -> None:
        self.set_state(self.ACTIVE_MODEL, name)
        self.db.conn.execute("UPDATE models SET activated_at = ? WHERE name = ?", [time.time(), name])

    def model_history(self) -> list[str]:
        return self.get_state(self.MODEL_HISTORY, [])

    def set_model_history(self, history: list[str]) -> None:
        self.set_state(self.MODEL_HISTORY, list(history))

    def serving_space(self, model: str) -> str | None:
        """The space `model` searches and writes when active, if a transform gave it its own."""
        return self.get_state(self.SERVING_SPACES, {}).get(model)

    def set_serving_space(self, model: str, space: str | None) -> None:
        self.set_state_entry(self.SERVING_SPACES, model, space)

    # -- models ---------------------------------------------------------------------------
    def register_model(self, info: dict, source: str) -> None:
        if self.db["models"].count_where("name = ?", [info["name"]]):
            return
        self.db["models"].insert({
            "name": info["name"], "space": info["space"], "dim": info["dim"], "kind": info["kind"],
            "compatible_with": json.dumps(list(info.get("compatible_with", []))),
            "source": source, "added_at": time.time(), "activated_at": None,
            "info": json.dumps({k: v for k, v in info.items() if k != "extra"}),
        })

    def models(self) -> list[dict]:
        rows = list(self.db["models"].rows_where(order_by="added_at"))
        for r in rows:
            r["compatible_with"] = json.loads(r["compatible_with"])
            r.pop("info", None)
        return rows

    def model(self, name: str) -> dict | None:
        row = self.db.execute("SELECT * FROM models WHERE name = ?", [name]).fetchone()
        if row is None:
            return None
        m = dict(zip([d[0] for d in self.db.execute("SELECT * FROM models LIMIT 0").description], row))
        m["compatible_with"] = json.loads(m["compatible_with"])
        m.pop("info", None)
        return m
