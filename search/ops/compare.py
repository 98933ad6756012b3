"""Compare two models on a query set against the current gallery: per query, what was gained
and lost in the top-k; with labels (ImageFolder queries), top-1/top-5/mAP and flip rates."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models import metrics
from models.evaluation.score import Summary, relevance_outcomes
from models.imagefolder import IMAGE_SUFFIXES
from models.imageio import BadImage, decode

from search.core import GalleryCore
from search.errors import GalleryError
from search.ops.query import read_query_image
from search.storage.imagestore import sha256_bytes

LOST_KS = metrics.LOST_KS  # lost@k is always reported at these depths, and at the compare's k
FULL_RANKING_MAX = 20000  # mAP over the full ranking up to this many gallery vectors, else mAP@100


@dataclass
class Query:
    name: str
    data: bytes
    label: str | None = None

    @property
    def sha256(self) -> str:
        return sha256_bytes(self.data)


def queries_from_folder(folder: Path) -> list[Query]:
    folder = Path(folder)
    if not folder.is_dir():
        raise GalleryError(f"no such folder: {folder}")
    from models.imageio import read_photo_file

    from search.storage.files import collect_files

    # regular files only (FIFOs, devices, links to them passed over), each read with a bound
    files = [f for f in collect_files([folder]) if f.suffix.lower() in IMAGE_SUFFIXES]
    labelled = all(f.parent != folder for f in files) and files
    queries = []
    for f in files:
        try:
            data = read_photo_file(f)
        except BadImage as e:
            raise GalleryError(f"{f}: {e}") from None
        queries.append(Query(str(f.relative_to(folder)), data, f.parent.name if labelled else None))
    return queries


def queries_from_log(gallery: GalleryCore, limit: int = 200) -> list[Query]:
    out, seen = [], set()
    for query, sha in gallery.catalog.logs.logged_image_queries():
        if sha in seen:
            continue
        seen.add(sha)
        data = read_query_image(gallery, sha)
        if data is not None:
            out.append(Query(query or sha[:12], data))
        if len(out) >= limit:
            break
    if not out:
        raise GalleryError("the query log has no image searches yet: search first, or give --queries DIR")
    return out


def gallery_labels(gallery: GalleryCore) -> dict[int, str | None]:
    """A gallery photo's label: its album (by default the folder it was indexed from)."""
    return gallery.catalog.images.album_labels()


def embed_queries(gallery: GalleryCore, model_name: str, queries: list[Query]):
    """(vectors of the decodable queries, mask of which were decodable, the model)."""
    model = gallery.load_model(model_name)
    images, ok = [], []
    for q in queries:
        try:
            images.append(decode(q.data, model.info.image_size).image)
            ok.append(True)
        except BadImage:
            ok.append(False)
    return model.embed_images(images), ok, model


def rank_vectors(gallery: GalleryCore, vectors: np.ndarray, space: str, depth: int,
                 exclude: list[int | None]) -> list[list[int]]:
    """Gallery ids by decreasing similarity for each query vector, its own image left out."""
    idx = gallery.index(space)
    if idx is None:
        raise GalleryError(f"the gallery has no vectors in space {space!r}")
    _, found = idx.search(vectors, min(depth + 1, idx.ntotal))
    return [[int(i) for i in row if i >= 0 and int(i) != own][:depth]
            for row, own in zip(found, exclude)]


def relevance_matrix(relevant: list[np.ndarray]) -> np.ndarray:
    """Ragged per-query relevance (ranked results of an index) as one matrix, padded with False."""
    width = max(1, *(len(r) for r in relevant))
    m = np.zeros((len(relevant), width), bool)
    for i, r in enumerate(relevant):
        m[i, : len(r)] = r
    return m


def relevance_metrics(relevant: list[np.ndarray], depth_label) -> dict:
    """top-1/top-5/mAP of rankings an index made: one side of the one evaluation."""
    o = relevance_outcomes(relevance_matrix(relevant))
    side = Summary(o, o).side("new", ("top1", "top5", "map"))
    return {**side, "map_depth": depth_label}


def _rank(gallery: GalleryCore, model_name: str, queries: list[Query], depth: int, exclude: list[int | None]):
    vectors, ok, model = embed_queries(gallery, model_name, queries)
    kept = [own for own, q_ok in zip(exclude, ok) if q_ok]
    ranked = iter(rank_vectors(gallery, vectors, gallery.space_for(model), depth, kept) if kept else [])
    return [next(ranked) if q_ok else None for q_ok in ok], gallery.space_for(model)


def compare(gallery: GalleryCore, old: str, new: str, queries: list[Query], k: int = 10,
            save: bool = True) -> dict:
    t0 = time.perf_counter()
    if not queries:
        raise GalleryError("no queries to compare on")
    own = [gallery.catalog.images.image_id(q.sha256) for q in queries]
    labelled = all(q.label is not None for q in queries)
    ntotal = gallery.catalog.images.count_images()
    depth = (ntotal if ntotal <= FULL_RANKING_MAX else 100) if labelled else k
    old_ranked, old_space = _rank(gallery, old, queries, depth, own)
    new_ranked, new_space = _rank(gallery, new, queries, depth, own)
    labels = gallery_labels(gallery) if labelled else {}
    rows, old_rel, new_rel = [], [], []
    for q, o, n in zip(queries, old_ranked, new_ranked):
        if o is None or n is None:
            continue
        ok, nk = o[:k], n[:k]
        rows.append({"query": q.name, "label": q.label, "old": ok, "new": nk,
                     "gained": [i for i in nk if i not in ok], "lost": [i for i in ok if i not in nk],
                     "overlap": metrics.overlap_at_k(ok, nk, k)})
        if labelled:
            old_rel.append(np.array([labels.get(i) == q.label for i in o]))
            new_rel.append(np.array([labels.get(i) == q.label for i in n]))
    depths = sorted({*LOST_KS, k})
    scored = None
    if labelled and rows:  # old vs new by the one evaluation, on the index's rankings
        scored = Summary(relevance_outcomes(relevance_matrix(old_rel), ks=(1, 5, *depths)),
                         relevance_outcomes(relevance_matrix(new_rel), ks=(1, 5, *depths)))
        lost = {d: scored.lost(d) for d in depths}
        old_top1, new_top1 = scored.per_query("top1", "old"), scored.per_query("top1")
        for i, row in enumerate(rows):
            row["old_correct"], row["new_correct"] = bool(old_top1[i]), bool(new_top1[i])
            # lost every right photo: one in the old top-k, none in the new top-k
            row["lost_all_at"] = {str(d): bool(lost[d][i]) for d in depths}
            row["lost_all"] = row["lost_all_at"][str(k)]
    summary = {
        "old": old, "new": new, "old_space": old_space, "new_space": new_space, "k": k,
        "queries": len(rows), "skipped_queries": len(queries) - len(rows),
        "overlap_at_k": round(float(np.mean([r["overlap"] for r in rows])), 4) if rows else 0.0,
        "gained": sum(len(r["gained"]) for r in rows), "lost": sum(len(r["lost"]) for r in rows),
        "labelled": bool(labelled),
    }
    if scored is not None:
        depth_label = "full" if depth >= ntotal - 1 else depth
        summary["old_metrics"] = {**scored.side("old", ("top1", "top5", "map")), "map_depth": depth_label}
        summary["new_metrics"] = {**scored.side("new", ("top1", "top5", "map")), "map_depth": depth_label}
        summary.update(metrics.flip_rates(scored.per_query("top1", "old"),
                                          scored.per_query("top1")))
        summary["lost_at_k"] = {str(d): round(float(scored.lost(d).mean()), 4) for d in depths}
        summary["lost_queries"] = sum(r["lost_all"] for r in rows)
    if rows:
        from search.ops.modes import plan_check

        summary["plan_check"] = plan_check(gallery, new, summary)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    report = {"summary": summary, "queries": rows, "created_at": time.time()}
    if save:
        path = gallery.save_report("compare", f"{old}-vs-{new}", report)
        report["path"] = str(path)
    return report


def latest_report(gallery: GalleryCore) -> dict | None:
    return gallery.latest_report("compare")


def earlier_checks(gallery: GalleryCore, limit: int = 10) -> list[dict]:
    """How far off earlier bridge plans on this gallery were: the plan checks of its saved
    comparisons, newest first."""
    import json

    found = []
    for path in sorted(gallery.reports_dir.glob("compare-*.json"), reverse=True):
        try:
            summary = json.loads(path.read_text()).get("summary", {})
        except (OSError, ValueError):
            continue
        if summary.get("plan_check"):
            found.append({**summary["plan_check"], "queries": summary.get("queries"),
                          "report": str(path)})
        if len(found) >= limit:
            break
    return found
