"""One app process for tests/test_shared_catalog.py: it opens one `Gallery` and keeps it, as
the Streamlit app does (st.cache_resource), and answers JSON lines on stdin, one JSON line on
stdout each: {"op": "add", "path": P} | {"op": "search", "path": P} | {"op": "upgrade",
"name": N} | {"op": "rollback"}. Its home, catalog and image store come from GRACEFUL_HOME,
GRACEFUL_CATALOG and GRACEFUL_IMAGES."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from search.api import Gallery  # noqa: E402


def main() -> None:
    gallery = Gallery.open(create=True)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["op"] == "add":
                report = gallery.add([req["path"]])
                out = {"added": report.added, "duplicates": report.duplicates}
            elif req["op"] == "search":
                r = gallery.search(req["path"], k=req.get("k", 5))
                out = {"model": r.model, "hits": [h.as_dict() for h in r.hits]}
            elif req["op"] == "upgrade":
                out = {"changed": gallery.upgrade(req["name"]).changed}
            elif req["op"] == "rollback":
                out = {"active": gallery.rollback().model}
            else:
                break
        except Exception as e:  # reported to the test, which fails on it
            out = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(out), flush=True)
    gallery.close()


if __name__ == "__main__":
    main()
