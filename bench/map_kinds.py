"""The three gallery-map kinds side by side on the simulated foreign domain of section 15
(issue 24): out-of-fold fidelity (what `choose_map` decides by, labels unseen) next to what the
test queries then measure through the gallery map alone and fused at w = 0.3.

    python -m bench.map_kinds --cache /tmp/gb/cache
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.bridge import CALTECH, domain, summary


def main() -> None:
    from models.bridge import choose_map, fuse

    from search.ops.fit_sample import bridge_sample

    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, required=True)
    args = ap.parse_args()
    classes = sorted(p.name for p in (CALTECH / "train").iterdir() if p.is_dir())
    half = len(classes) // 2
    for name, gal in (("second half", classes[half:]), ("first half", classes[:half])):
        g_labels, q_labels, old, new, oq, nq = domain(gal, args.cache, progress=False)
        n = len(g_labels)
        k = bridge_sample(n)
        emb = np.random.default_rng(0).permutation(n)[:k]
        train = emb[max(8, k // 5):]
        t0 = time.perf_counter()
        chosen = choose_map(old[train], new[train])
        print(f"== gallery: {name} ({n} photos, {len(train)} training pairs): chose {chosen.kind} "
              f"in {time.perf_counter() - t0:.1f} s; out-of-fold {chosen.scores}")
        for kind in chosen.scores:
            m = choose_map(old[train], new[train], kinds=(kind,))
            mixed = m.map.apply(old)
            mixed[emb] = new[emb]
            s = summary(oq, nq, old, mixed, q_labels, g_labels)
            f = summary(oq, fuse(oq, nq, 0.3), old, fuse(old, mixed, 0.3), q_labels, g_labels)
            print(f"  {kind:<10} gallery map: top-1 {s['top1']:.3f} mAP {s['map']:.3f} lost@5 "
                  f"{s['lost_at_5']:.3f} | fused 0.3: top-1 {f['top1']:.3f} mAP {f['map']:.3f} "
                  f"lost@5 {f['lost_at_5']:.3f}", flush=True)


if __name__ == "__main__":
    main()
