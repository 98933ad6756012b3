"""The catalog schema version this Graceful writes (SQLite: PRAGMA user_version; PostgreSQL:
the graceful_schema table); a catalog of a newer one is refused, an older one migrated."""
SCHEMA_VERSION = 4
