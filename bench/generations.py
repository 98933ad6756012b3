"""Many generations and many devices as a script; the code lives in `models.evaluation.generations`.

    python -m bench.generations chain --train ../shared/data/caltech101/train \
        --test ../shared/data/caltech101/test --cache /tmp/gb/cache --json bench/out/chain.json
    python -m bench.generations hetero --train ... --test ... --json bench/out/hetero.json

Same options as `graceful bench chain|hetero` but no --home (feature cache: --cache); prints the JSON.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The library code (also behind `graceful bench chain|hetero` and the app); this is its script.
from models.evaluation.generations import GenConfig, chain, hetero  # noqa: F401


def main() -> None:
    from bench.common import machine, write_json
    from search.runtime import configure_threads

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=["chain", "hetero"])
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--test", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/gb/cache"), help="feature cache")
    ap.add_argument("--loss", choices=["ce", "lqf"], default="ce")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    configure_threads(args.threads)
    cfg = GenConfig(args.train, args.test, args.cache, dim=args.dim, epochs=args.epochs, loss=args.loss)
    result = (chain if args.kind == "chain" else hetero)(cfg)
    write_json(args.json, {"machine": machine(), "command": " ".join(sys.argv), **result})


if __name__ == "__main__":
    main()
