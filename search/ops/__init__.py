"""Operations: ingest, query, upgrade, pre-flight, fit, transform, backfill, re-embed, compare
and check, each a function of the open gallery (search.core)."""
