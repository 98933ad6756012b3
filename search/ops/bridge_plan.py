"""The plan of a label-free bridge: every path measured on held-out photos searching the whole
gallery (what a real query sees), label-free always, with albums when there are some.

Paths (all but `keep` use the new model's queries):
  keep       the old model, the stored vectors (the baseline);
  queries    the new query mapped into the stored space (query map; the gallery untouched);
  transform  the stored vectors mapped into the new space (gallery map; the sample's real new
             vectors kept), searched by the new query;
  fused      both generations together: w * old cosine + (1 - w) * new cosine (new halves real
             where embedded, else mapped);
  backfill   the new model's own embedding of every photo (a full re-embed).

The reference is the whole gallery (a uniform sample of it past `REFERENCE_MAX`), each photo as
the path would serve it. A full re-embed needs every photo's new vector, which only the embedded
sample has: it is measured against the sample (`reference: "sample"`).
Label-free figures, each with its standard error over queries:
  kept_old   share of the old search's first 10 results (old query, stored vectors) kept;
  fidelity   share of a full re-embed's first 10 results returned, measured against the embedded
             sample with every mapped vector predicted by a map that never saw its photo.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.bridge import fuse
from models.evaluation.judge import BRIDGE, judge
from models.evaluation.score import label_codes, mean_se, near_duplicates, score, search

from search.ops.plan import MAX_LOST_AT_5, MAX_NFR, NEAR_DUPLICATE, judge_path

REFERENCE_MAX = 20000
FUSED_WEIGHTS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
# Label-free floor on the old first results a recommended path keeps: below it, more of what
# users found before is gone than a full re-embed loses on most upgrades (docs/BENCHMARKS.md
# section 15). The one judge's `BRIDGE` limits (models/evaluation/judge.py).
KEPT_FLOOR = BRIDGE.min_kept
BRIDGE_PATHS = ("keep", "queries", "transform", "fused", "backfill")


@dataclass
class BridgeData:
    """The vectors a bridge plan is measured on. Rows of `old_ref` are the reference photos;
    the first `n_emb` are the embedded sample (train rows, then held-out rows)."""
    old_ref: np.ndarray  # stored vectors of the reference photos
    new_emb: np.ndarray  # real new vectors of the embedded sample (n_emb rows)
    n_train: int
    mapped_rest: np.ndarray  # gallery map of the reference photos past the sample
    oof_train: np.ndarray  # out-of-fold gallery map of the train rows
    mapped_held: np.ndarray  # gallery map of the held-out rows (never trained on)
    query_map_held: np.ndarray  # query map of the held-out rows' new vectors
    labels: list | None  # album of every reference row (None: no albums)

    @property
    def n_emb(self) -> int:
        return len(self.new_emb)

    @property
    def held(self) -> np.ndarray:
        return np.arange(self.n_train, self.n_emb)


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    m, se = mean_se(x)
    return round(m, 4), round(se, 4)


def _excluded(old_q: np.ndarray, old_ref: np.ndarray, own: np.ndarray) -> np.ndarray:
    mask = near_duplicates(old_q, old_ref, NEAR_DUPLICATE)
    mask[np.arange(len(own)), own] = True
    return mask


def measure(d: BridgeData, weights=FUSED_WEIGHTS) -> dict:
    """Every path's figures (fused at each weight) on the held-out queries."""
    held = d.held
    old_q, new_q = d.old_ref[held], d.new_emb[held]
    # the gallery as each path serves it (whole reference)
    new_gallery = np.concatenate([d.new_emb, d.mapped_rest])
    ex = _excluded(old_q, d.old_ref, held)
    # the embedded sample with honest mapped vectors (for fidelity and the full re-embed)
    sample_old = d.old_ref[: d.n_emb]
    sample_mapped = np.concatenate([d.oof_train, d.mapped_held])
    ex_s = ex[:, : d.n_emb]
    # label-free: the old search (whole gallery, and the sample) and a full re-embed's search of
    # the sample, each path scored against them (kept_old, fidelity) by the one evaluation
    keep_top = search(old_q, d.old_ref, ex)
    new_top_s = search(new_q, d.new_emb, ex_s)
    keep_top_s = search(old_q, sample_old, ex_s)

    paths: dict[str, dict] = {}

    def add(name, q, ref, q_s, ref_s, whole=True, **extra):
        mask = ex if whole else ex_s
        kept = score(old_q, q, d.old_ref, ref, excluded=mask,
                     old=keep_top if whole else keep_top_s).kept()
        fid = score(new_q, q_s, d.new_emb, ref_s, excluded=ex_s, old=new_top_s).kept()
        row = {"reference": "gallery" if whole else "sample", **extra}
        row["kept_old"], row["kept_old_se"] = _mean_se(kept)
        row["fidelity"], row["fidelity_se"] = _mean_se(fid)
        row["_search"] = (q, ref, mask, whole)
        paths[name] = row

    add("keep", old_q, d.old_ref, old_q, sample_old)
    qm = d.query_map_held
    add("queries", qm, d.old_ref, qm, sample_old)
    add("transform", new_q, new_gallery, new_q, sample_mapped)
    for w in weights:
        add(f"fused@{w:.2f}", fuse(old_q, new_q, w), fuse(d.old_ref, new_gallery, w),
            fuse(old_q, new_q, w), fuse(sample_old, sample_mapped, w), weight=w)
    add("backfill", new_q, d.new_emb, new_q, d.new_emb, whole=False)
    judged = _label_figures(d, d.labels, paths, old_q, ex, ex_s) if d.labels is not None else 0
    for row in paths.values():
        row.pop("_search")
    out = {"queries": int(len(held)), "reference": int(len(d.old_ref)),
           "embedded": int(d.n_emb), "labelled": judged > 0, "judged_by_albums": judged,
           "paths": paths}
    if d.labels is not None and not judged:
        # e.g. stored vectors that already collapse each album: every album mate is a near
        # duplicate by the old model, so no held-out photo has a right answer left to find
        out["albums_unusable"] = ("no held-out photo has an album mate left once near "
                                  f"duplicates (old-model cosine >= {NEAR_DUPLICATE}) are left "
                                  "out: judged label-free")
    return out


def _label_figures(d: BridgeData, labels: list, paths: dict, old_q, ex, ex_s) -> int:
    """top-1/top-5/mAP/NFR/lost@k of each path against the old search on the same reference
    (`labels`: d's albums), over the queries that have a right answer left; returns how many
    those are."""
    q_labels = [labels[i] for i in d.held]
    ref_all = list(labels)
    ref_s = ref_all[: d.n_emb]
    q_codes, ref_codes = label_codes(q_labels, ref_all)
    has_right = ((q_codes[:, None] == ref_codes[None, :]) & ~ex).any(1)
    if not has_right.any():
        return 0
    rows = np.flatnonzero(has_right)
    q_labels = [q_labels[i] for i in rows]
    ex, ex_s = ex[rows], ex_s[rows]
    base = {True: search(old_q[rows], d.old_ref, ex, q_labels, ref_all),
            False: search(old_q[rows], d.old_ref[: d.n_emb], ex_s, q_labels, ref_s)}
    for row in paths.values():
        q, ref, _, whole = row["_search"]
        s = score(old_q[rows], q[rows], d.old_ref if whole else d.old_ref[: d.n_emb], ref,
                  q_labels, ref_all if whole else ref_s, ex if whole else ex_s,
                  old=base[whole]).as_dict()
        s["verdict"], s["flags"] = judge_path(s)
        row["labels"] = s
    return int(has_right.sum())


def choose_weight(measured: dict) -> float:
    """The fused weight: with albums, the best mAP among weights that lose at most
    MAX_LOST_AT_5 and flip at most MAX_NFR (else the most conservative); label-free, the most
    new weight that keeps KEPT_FLOOR of the old first results."""
    fused = [r for name, r in measured["paths"].items() if name.startswith("fused@")]
    if measured["labelled"]:
        safe = [r for r in fused if r["labels"]["lost_at_5"] <= MAX_LOST_AT_5
                and r["labels"]["nfr"] <= MAX_NFR and r["labels"]["verdict"] != "worse"]
        if safe:
            return max(safe, key=lambda r: (r["labels"]["map"], -r["weight"]))["weight"]
        return max(r["weight"] for r in fused)
    ok = [r for r in fused if r["kept_old"] >= KEPT_FLOOR]
    if not ok:
        return max(r["weight"] for r in fused)
    return max(ok, key=lambda r: (r["fidelity"], r["weight"]))["weight"]


def plan_rows(measured: dict, weight: float, costs: dict[str, dict], commands: dict) -> list[dict]:
    """One row per path (fused at its chosen weight): figures, cost and the command."""
    rows = []
    for path in BRIDGE_PATHS:
        s = measured["paths"][f"fused@{weight:.2f}" if path == "fused" else path]
        row = {"path": path, "fidelity": s["fidelity"], "kept_old": s["kept_old"],
               "se": {"fidelity": s["fidelity_se"], "kept_old": s["kept_old_se"]},
               "fidelity_se": s["fidelity_se"], "kept_old_se": s["kept_old_se"],
               "reference": s["reference"], **costs[path], "command": commands.get(path)}
        if path == "fused":
            row["weight"] = weight
        lab = s.get("labels")
        if lab:
            row.update({k: lab[k] for k in ("top1", "top5", "map", "nfr", "lost_at_5",
                                            "lost_at_10")})
            row["se"].update({k: lab[f"{k}_se"] for k in ("top1", "top5", "map", "lost_at_5")})
        if path == "keep":
            row["verdict"], flags = "baseline", []
        else:  # the one judge: the kept floor label-free, and with albums the plan's rule
            v = judge({"kept_old": s["kept_old"], "kept_old_se": s["kept_old_se"], **(lab or {})},
                      BRIDGE)
            row["verdict"], flags = v.verdict, v.flags
        row["flags"] = flags
        rows.append(row)
    return rows


def recommend(rows: list[dict], labelled: bool) -> tuple[str, str]:
    """(path, one sentence). Eligible: no flag and (with albums) not worse. Label-free: the
    highest fidelity to a full re-embed, the cheapest within its standard error; with albums,
    the best mAP, the cheapest within its standard error. Nothing eligible: keep.
    Label-free, fidelity alone would always favour a full re-embed, which loses what the old
    vectors found (measured: more lost@5 than fused search, docs/BENCHMARKS.md section 15): the
    order is fused, gallery map, query map, then a full re-embed."""
    ok = [r for r in rows if r["path"] != "keep" and not r["flags"] and r["verdict"] != "worse"]
    if not ok:
        return "keep", ("Keep the current model: every path loses too much of what searches "
                        "found before (" + "; ".join(f"{r['path']}: {r['flags'][0]}"
                                                   for r in rows if r["flags"])[:300] + ").")
    key, name = ("map", "mAP") if labelled else ("fidelity", "fidelity to a full re-embed")
    if not labelled:
        order = ("fused", "transform", "queries", "backfill")
        ok = [min(ok, key=lambda r: order.index(r["path"]))]
    best = max(ok, key=lambda r: r[key])
    margin = max(best["se"][key], 0.005)
    chosen = min((r for r in ok if r[key] >= best[key] - margin),
                 key=lambda r: (r["photos_embedded"], r["seconds"], BRIDGE_PATHS.index(r["path"])))
    c = chosen
    text = (f"Recommended: {c['path']}" + (f" (weight {c['weight']:.2f} on the old space)"
                                           if c["path"] == "fused" else "")
            + f": {name} {c[key]:.3f}, keeps {c['kept_old']:.0%} of the old first results")
    if labelled:
        text += f", top-1 {c['top1']:.3f}, lost@5 {c['lost_at_5']:.3f}"
    if not labelled:
        text += (". Without albums Graceful cannot judge whether the new model finds the right "
                 "photos more often here; put a few dozen photos into albums (graceful albums "
                 "set) or compare on labelled query folders (graceful compare --queries DIR)")
    return c["path"], text + "."

