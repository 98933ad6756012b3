"""Core: the open gallery (catalog, stores, spaces, the active model, live indexes) and result types."""
from search.core.gallery import GalleryCore
from search.core.results import SearchHit, SearchResult

__all__ = ["GalleryCore", "SearchHit", "SearchResult"]
