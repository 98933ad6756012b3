# faiss's bundled stubs are generated and incomplete (no DirectMap, id_map, invlists, ...):
# mypy reads this stub instead (pyproject's mypy_path), so faiss is typed as Any.
from typing import Any

def __getattr__(name: str) -> Any: ...
