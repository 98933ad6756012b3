"""The compatibility benchmark as a script; the code lives in `models.evaluation.compat`.

    python -m bench.compat --train ../shared/data/caltech101/train \
        --test ../shared/data/caltech101/test --old-classes 0.5 --cache /tmp/gb/cache \
        --json bench/out/compat.json

Same options as `graceful bench compat` but no --home (feature cache: --cache); prints the JSON.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The library code (also behind `graceful bench compat`); this module is only its script.
from models.evaluation.compat import DEFAULT_METHODS, CompatBenchConfig, run  # noqa: F401


def main() -> None:
    from bench.common import machine, write_json
    from search.runtime import configure_threads

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--test", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/gb/cache"), help="feature cache")
    ap.add_argument("--old-classes", type=float, default=0.5)
    ap.add_argument("--old-backbone", default="lite0")
    ap.add_argument("--new-backbone", default="lite2")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--loss", choices=["ce", "lqf"], default="ce")
    ap.add_argument("--old-classifier", choices=["trained", "prototypes", "both"], default="trained")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    configure_threads(args.threads)
    cfg = CompatBenchConfig(args.train, args.test, args.cache, args.old_backbone, args.new_backbone,
                            args.old_classes, tuple(m for m in args.methods.split(",") if m),
                            args.dim, args.epochs, loss=args.loss, old_classifier=args.old_classifier)
    write_json(args.json, {"machine": machine(), "command": " ".join(sys.argv), **run(cfg)})


if __name__ == "__main__":
    main()
