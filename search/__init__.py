"""Graceful's gallery engine: catalog, image store, FAISS index, ingest, query, upgrades."""
