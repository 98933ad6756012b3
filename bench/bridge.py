"""Label-free bridges and fused search on a simulated foreign domain (issue 24).

The gallery is one half of the Caltech-101 classes (train photos plus the 468 distractors),
indexed with lite0; NEW is plain lite2; the same classes' test photos are the queries (the
"real queries", never seen by any fit). Albums are hidden from every fit: labels only score.
For each path the engine's own pieces are used (models.bridge maps chosen by cross-validated
fidelity, the fused concatenation, search.ops.bridge_plan for the plan and its weight), on the
sample the fit would take (search.ops.fit_sample.bridge_sample), then every query searches the whole
gallery. The plan's own figures (held-out gallery photos, labels used only to score) are set
next to the test-split figures.

    python -m bench.bridge --cache /tmp/gb/cache --json bench/out/bridge.json
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.common import CALTECH, machine, write_json


def files_of(split: str, classes: list[str]) -> tuple[list[Path], list[str | None]]:
    files, labels = [], []
    for c in classes:
        for f in sorted((CALTECH / split / c).iterdir()):
            files.append(f)
            labels.append(c)
    return files, labels


def summary(old_q, new_q, ref_old, ref_new, q_labels, ref_labels, own=None) -> dict:
    """One path against old/old: the one evaluation (models/evaluation/score.py)."""
    from models.evaluation.score import score

    own = np.full(len(old_q), -1) if own is None else own
    s = score(old_q, new_q, ref_old, ref_new, q_labels, ref_labels, own_index=own).as_dict()
    return {k: s[k] for k in ("top1", "top5", "map", "nfr", "lost_at_5", "lost_at_10", "retention",
                              "top1_se", "map_se", "lost_at_5_se")}


def domain(gallery_classes: list[str], cache: Path, progress: bool = True):
    """The simulated foreign domain: (gallery labels, query labels, gallery lite0, gallery lite2,
    query lite0, query lite2): gallery = these classes' train photos + the distractors
    (unlabelled), queries = their test photos; features from `cache`."""
    from models import registry
    from models.features import extract

    g_files, g_labels = files_of("train", gallery_classes)
    dis = sorted((CALTECH / "distractors").iterdir())
    g_files += dis
    g_labels += [None] * len(dis)
    q_files, q_labels = files_of("test", gallery_classes)
    lite0, lite2 = registry.load("lite0"), registry.load("lite2")
    vectors = [extract(m, f, cache, batch_size=16, progress=progress)
               for m, f in ((lite0, g_files), (lite2, g_files), (lite0, q_files), (lite2, q_files))]
    return (g_labels, q_labels, *vectors)


def each_half(run_split, args) -> dict:
    """`run_split(classes, cache, seed)` on each half of the Caltech classes as the gallery."""
    classes = sorted(p.name for p in (CALTECH / "train").iterdir() if p.is_dir())
    half = len(classes) // 2
    for name, gallery in (("second half", classes[half:]), ("first half", classes[:half])):
        yield name, run_split(gallery, args.cache, args.seed)


def run_split(gallery_classes: list[str], cache: Path, seed: int) -> dict:
    from models.bridge import choose_map, fuse

    from search.ops import bridge_plan
    from search.ops.fit_sample import bridge_sample as sample_bound

    g_labels, q_labels, old, new, oq, nq = domain(gallery_classes, cache)
    n = len(g_labels)
    k = sample_bound(n)
    order = np.random.default_rng(seed).permutation(n)
    emb = order[:k]
    held = emb[: max(8, k // 5)]
    train = emb[max(8, k // 5):]
    gmap = choose_map(old[train], new[train], seed=seed)
    qmap = choose_map(new[train], old[train], side="query", seed=seed)
    mixed = gmap.map.apply(old)
    mixed[emb] = new[emb]  # the sample's real vectors are kept

    # the plan, as the fit measures it (labels hidden for the weight, used only to score)
    rest = np.setdiff1d(np.arange(n), emb)
    ref_rows = np.concatenate([train, held, rest])
    data = bridge_plan.BridgeData(old[ref_rows], new[np.concatenate([train, held])], len(train),
                                  gmap.map.apply(old[rest]), gmap.oof, gmap.map.apply(old[held]),
                                  qmap.map.apply(new[held]), [g_labels[i] for i in ref_rows])
    measured = bridge_plan.measure(data)
    unlabelled = dict(measured, labelled=False)
    w_free = bridge_plan.choose_weight(unlabelled)
    w_lab = bridge_plan.choose_weight(measured)
    out = {"gallery": n, "queries": len(q_labels), "embedded": int(k), "weight_label_free": w_free,
           "weight_with_albums": w_lab, "paths": {}, "plan": {}}
    paths = {"old/old": (oq, old, old), "full re-embed": (nq, new, old),
             "query map": (qmap.map.apply(nq), old, old), "gallery map": (nq, mixed, old)}
    for w in bridge_plan.FUSED_WEIGHTS:
        paths[f"fused@{w:.2f}"] = (fuse(oq, nq, w), fuse(old, mixed, w), old)
    paths["fused@0.50 after a full re-embed"] = (fuse(oq, nq, 0.5), fuse(old, new, 0.5), old)
    for name, (q, ref, _) in paths.items():
        out["paths"][name] = summary(oq, q, old, ref, q_labels, g_labels)
    for name, row in measured["paths"].items():
        out["plan"][name] = {"fidelity": row["fidelity"], "kept_old": row["kept_old"],
                             **{k2: row["labels"][k2] for k2 in ("top1", "map", "lost_at_5",
                                                                 "top1_se", "lost_at_5_se")}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    result: dict = {"machine": machine(), "splits": {}}
    for name, r in each_half(run_split, args):
        result["splits"][name] = r
        print(f"== gallery: {name} of the classes ({r['gallery']} photos, {r['queries']} test "
              f"queries, {r['embedded']} embedded by lite2); fused weight label-free "
              f"{r['weight_label_free']}, with albums {r['weight_with_albums']}")
        for p, s in r["paths"].items():
            print(f"  {p:<34} top-1 {s['top1']:.3f}  top-5 {s['top5']:.3f}  mAP {s['map']:.3f}  "
                  f"NFR {s['nfr']:.3f}  lost@5 {s['lost_at_5']:.3f}  kept {s['retention']:.3f}")
        for p, s in r["plan"].items():
            print(f"  plan {p:<29} top-1 {s['top1']:.3f}±{s['top1_se']:.3f}  mAP {s['map']:.3f}  "
                  f"lost@5 {s['lost_at_5']:.3f}±{s['lost_at_5_se']:.3f}  fidelity "
                  f"{s['fidelity']:.3f}  kept {s['kept_old']:.3f}")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
