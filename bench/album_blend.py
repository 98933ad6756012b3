"""The album path with and without the old query (issue 24): a PCT head fitted as
`train --from-gallery` fits it (lite2 features, the stored lite0 vectors as the old side, albums
as labels, relational distillation), then the test photos of the same classes search the whole
gallery: the head's queries alone (`queries`) and blended with the old query at the weight the
fit chooses on its training photos (`blend`, search.ops.fit_blend). Caltech halves as in
section 8 (albums = classes; distractors unlabelled); features from --cache.

    python -m bench.album_blend --cache /tmp/gb/cache --json bench/out/album_blend.json
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.bridge import domain, each_half, summary
from bench.common import machine, write_json


def run_split(gallery_classes: list[str], cache: Path, seed: int) -> dict:
    from models.train import TrainConfig, old_classifier_rows, train_head

    from search.ops import fit_blend
    from search.ops.fit import REL_WEIGHT
    from search.ops.fit_sample import default_sample

    g_labels, q_labels, old, feats, oq, fq = domain(gallery_classes, cache, progress=False)
    labelled = [i for i, lab in enumerate(g_labels) if lab is not None]
    rng = np.random.default_rng(seed)
    train = rng.permutation(labelled)[: int(default_sample(len(g_labels)) * 0.8)]
    classes = sorted({g_labels[i] for i in train})
    index = {c: k for k, c in enumerate(classes)}
    y = np.array([index[g_labels[i]] for i in train])
    cfg = TrainConfig("pct", dim=1280, epochs=30, seed=seed, rel_weight=REL_WEIGHT)
    trained = train_head(cfg, feats[train], y, len(classes), old_emb=old[train],
                         old_classifier=old_classifier_rows(old[train], y, len(classes)))
    head_q = trained.embed(fq)
    def train_on(rows):
        sub = train[rows]
        sub_classes = sorted({g_labels[i] for i in sub})
        ys = np.array([sub_classes.index(g_labels[i]) for i in sub])
        return train_head(cfg, feats[sub], ys, len(sub_classes), old_emb=old[sub],
                          old_classifier=old_classifier_rows(old[sub], ys, len(sub_classes))).embed

    w, choice = fit_blend.honest_weight(train_on, feats[train], old[train],
                                        [g_labels[i] for i in train], seed)
    out = {"gallery": len(g_labels), "queries": len(q_labels), "trained_on": len(train),
           "weight": w, "choice": choice, "paths": {}}
    for name, q in (("old/old", oq), ("queries (head alone)", head_q),
                    (f"blend {w:.2f} (chosen)", fit_blend.blend(oq, head_q, w))):
        out["paths"][name] = summary(oq, q, old, old, q_labels, g_labels)
    for alt in fit_blend.WEIGHTS:
        out["paths"][f"blend {alt:.2f}"] = summary(oq, fit_blend.blend(oq, head_q, alt), old, old,
                                                   q_labels, g_labels)
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
        print(f"== gallery: {name} ({r['gallery']} photos, {r['queries']} test queries, head "
              f"trained on {r['trained_on']}); blend weight chosen {r['weight']}")
        for p, s in r["paths"].items():
            print(f"  {p:<24} top-1 {s['top1']:.3f}  top-5 {s['top5']:.3f}  mAP {s['map']:.3f}  "
                  f"NFR {s['nfr']:.3f}  lost@5 {s['lost_at_5']:.3f}  kept {s['retention']:.3f}")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
