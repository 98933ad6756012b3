"""A catalog writer in a process of its own, for the concurrency tests (tests/test_catalogs.py):

    python tests/catalog_worker.py LOCATION write TAG BATCHES [SIZE]
        BATCHES transactions, each SIZE new images and their vectors in space "s"; prints
        "committed N" after each commit (flushed), so a test knows what must survive a kill
    python tests/catalog_worker.py LOCATION history TAG N
        N times, in one transaction each: read the model history, push TAG-i, set it (what an
        upgrade does); two of them at once must keep every push

LOCATION: a SQLite file or a postgresql:// URL. A GalleryError ends it with one line on stderr
and exit status 1."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from search.errors import GalleryError  # noqa: E402
from search.settings import Settings  # noqa: E402
from search.storage.catalog import open_catalog  # noqa: E402


def main(location: str, mode: str, tag: str, n: int, size: int = 4) -> None:
    where = location if location.startswith("postgresql://") else Path(location)
    cat = open_catalog(Path(location).parent if where is not location else Path("/tmp"),
                       where, Settings.from_env())
    rng = np.random.default_rng(abs(hash(tag)) % 2**32)
    for b in range(n):
        if mode == "write":
            with cat.transaction():
                ids = [cat.images.add_image({"sha256": f"{tag}-{b}-{i}".ljust(64, "0"), "name": "x.jpg",
                                             "ext": ".jpg", "bytes": 1, "width": 1, "height": 1,
                                             "format": "JPEG", "source": f"/p/{tag}/{b}-{i}.jpg",
                                             "added_at": time.time(), "album": tag})
                       for i in range(size)]
                v = rng.normal(size=(size, 16)).astype(np.float32)
                cat.vectors.put_vectors(ids, v / np.linalg.norm(v, axis=1, keepdims=True), tag, "s")
        else:
            with cat.transaction():
                history = cat.models.model_history()
                time.sleep(0.002)  # widen the window a lost update would need
                cat.models.set_model_history([*history, f"{tag}-{b}"])
        print(f"committed {b + 1}", flush=True)
    cat.close()


if __name__ == "__main__":
    try:
        main(sys.argv[1], sys.argv[2], sys.argv[3], *map(int, sys.argv[4:]))
    except GalleryError as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)
