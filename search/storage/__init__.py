"""Storage: the SQLite catalog, the content-addressed image store and the vector stores."""
