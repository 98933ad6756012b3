"""The state table: key/value settings (index kind, vector store, query logging, ...)."""
from __future__ import annotations

import json
from typing import Any, Iterable

from .db import Repo


class StateRepo(Repo):
    # -- state ----------------------------------------------------------------------------
    # The keys of the state table; nothing outside this class names them.
    ACTIVE_MODEL, MODEL_HISTORY, INDEX_KIND, LOG_QUERIES = (
        "active_model", "model_history", "index_kind", "log_queries")
    VECTOR_STORE, STORE_SYNCED, GALLERY_ID = "vector_store", "store_synced", "gallery_id"
    RUNTIMES, COMPACT_PENDING = "runtimes", "compact_pending"
    SERVING_SPACES = "serving_spaces"

    def get_state(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM state WHERE key = ?", [key]).fetchone()
        return json.loads(row[0]) if row else default

    def set_state(self, key: str, value: Any) -> None:
        self.db.execute("INSERT INTO state (key, value) VALUES (?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        [key, json.dumps(value)])

    def set_state_entry(self, key: str, name: str, value: Any) -> None:
        """Set one entry of the dict kept under `key` (None removes it), in one transaction."""
        with self.conn.transaction():
            entries = self.get_state(key, {})
            if value is None:
                entries.pop(name, None)
            else:
                entries[name] = value
            self.set_state(key, entries)

    def index_kind(self) -> str:
        return self.get_state(self.INDEX_KIND, "flat")

    def set_index_kind(self, kind: str) -> None:
        self.set_state(self.INDEX_KIND, kind)

    def vector_store(self) -> dict | None:
        """Where the search vectors are served from: {"kind": "faiss"} or {"kind": "milvus",
        "uri": ...}; None for a gallery that never chose (it uses FAISS index files)."""
        return self.get_state(self.VECTOR_STORE)

    def set_vector_store(self, config: dict | None) -> None:
        if config is None:
            self.db.execute("DELETE FROM state WHERE key = ?", [self.VECTOR_STORE])
        else:
            self.set_state(self.VECTOR_STORE, config)
        self.set_state(self.STORE_SYNCED, {})  # nothing is known to be in the new store yet

    def gallery_id(self) -> str:
        """A random id naming this gallery's collections in a shared vector database."""
        gid = self.get_state(self.GALLERY_ID)
        if gid is None:
            import uuid

            with self.conn.transaction():
                gid = self.get_state(self.GALLERY_ID)
                if gid is None:
                    gid = uuid.uuid4().hex[:12]
                    self.set_state(self.GALLERY_ID, gid)
        return gid

    def store_synced(self, space: str) -> dict | None:
        """What an external vector store was last known to hold for `space`: {"version",
        "kind"} recorded after a write to it was flushed; None when unknown."""
        return self.get_state(self.STORE_SYNCED, {}).get(space)

    def set_store_synced(self, space: str, record: dict | None) -> None:
        self.set_state_entry(self.STORE_SYNCED, space, record)

    def runtimes(self) -> dict[str, list[str]]:
        """Per model, the inference paths (torch, onnxruntime) that computed its stored vectors."""
        return self.get_state(self.RUNTIMES, {})

    def note_runtime(self, model: str, runtimes: Iterable[str]) -> None:
        known = self.runtimes().get(model, [])
        if set(runtimes) <= set(known):
            return
        with self.conn.transaction():
            record = self.runtimes()
            record[model] = sorted(set(record.get(model, [])) | set(runtimes))
            self.set_state(self.RUNTIMES, record)

    def compact_if_pending(self) -> None:
        """At open (SQLite): a migration that freed space makes a compaction pending, and a
        pending one runs when the catalog is not read-only (`Db.compact`: the next open tries
        again when another connection is using the file)."""
        if self.conn.compact_due:
            self.set_state(self.COMPACT_PENDING, True)
        if self.conn.read_only is None and self.get_state(self.COMPACT_PENDING) and \
                self.conn.compact():
            self.set_state(self.COMPACT_PENDING, False)

    def log_queries(self) -> bool:
        return self.get_state(self.LOG_QUERIES, True)

    def set_log_queries(self, on: bool) -> None:
        self.set_state(self.LOG_QUERIES, bool(on))
