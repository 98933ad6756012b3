"""What a search returns: ranked hits with the model and space that produced them."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class SearchHit:
    rank: int
    image_id: int
    sha256: str
    name: str
    path: str
    score: float
    embedded_by: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResult:
    model: str
    space: str
    k: int
    elapsed_ms: float
    hits: list[SearchHit]

    def as_dict(self) -> dict:
        return {"model": self.model, "space": self.space, "k": self.k,
                "elapsed_ms": round(self.elapsed_ms, 3),
                "results": [h.as_dict() for h in self.hits]}
