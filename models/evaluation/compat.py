"""The compatibility benchmark (`graceful bench compat`, `python -m bench.compat`).

Old model: a head on the old backbone trained on the first fraction of the classes (sorted by
name). Every new method: a head on the new backbone trained on all classes. All training uses the
train images only; evaluation uses the test images alone: gallery = test images embedded by the
gallery-side model, queries = the same images embedded by the query-side model, leave-one-out.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models import metrics, registry
from models.features import extract
from models.imagefolder import align_classes, scan
from models.train import COMPATIBLE_METHODS, TrainConfig, old_classifier_rows, slerp, train_head

DEFAULT_METHODS = ("independent", "l2", "bct", "pct", "adapter", "procrustes")


@dataclass
class CompatBenchConfig:
    train_dir: Path
    test_dir: Path
    cache_dir: Path
    old_backbone: str = "lite0"
    new_backbone: str = "lite2"
    old_classes: float = 0.5
    methods: tuple[str, ...] = DEFAULT_METHODS
    dim: int = 256
    epochs: int = 30
    slerp_t: float = 0.5
    loss: str = "ce"
    progress: bool = True
    overrides: dict = field(default_factory=dict)  # per-method TrainConfig fields
    # The old classifier that bct/pct's influence loss uses: "trained" (the old head's rows for
    # the classes it learned, class means for the rest), "prototypes" (class means of the old
    # embeddings for every class, as a gallery-fitted upgrade uses album means), or "both".
    old_classifier: str = "trained"


@dataclass
class Features:
    old_train: np.ndarray
    new_train: np.ndarray
    old_test: np.ndarray
    new_test: np.ndarray


def load_features(cfg: CompatBenchConfig, train, test) -> tuple[Features, dict]:
    t0 = time.perf_counter()
    old_model = registry.load(cfg.old_backbone)
    new_model = registry.load(cfg.new_backbone)
    f = Features(
        extract(old_model, train.files, cfg.cache_dir, progress=cfg.progress),
        extract(new_model, train.files, cfg.cache_dir, progress=cfg.progress),
        extract(old_model, test.files, cfg.cache_dir, progress=cfg.progress),
        extract(new_model, test.files, cfg.cache_dir, progress=cfg.progress),
    )
    return f, {"feature_extraction_s": round(time.perf_counter() - t0, 1)}


NAMES = ("top1", "top5", "map")


def pair_entry(s: metrics.Summary, old_class_mask: np.ndarray, side: str = "new") -> dict:
    """One pair of the matrix from a score of the one evaluation against old/old: `side`'s
    top-1/top-5/mAP and, for a new side, its flips against old/old (all queries, those of the
    old classes, those of the new ones)."""
    entry = s.side(side, NAMES)
    if side == "new":
        old, new = s.old.top1, s.new.top1
        assert old is not None and new is not None  # scored with labels
        entry.update(metrics.flip_rates(old, new))
        entry["old_classes"] = metrics.flip_rates(old, new, old_class_mask)
        entry["new_classes"] = metrics.flip_rates(old, new, ~old_class_mask)
    return entry


def criterion(s: metrics.Summary) -> dict:
    """M(new, old) > M(old, old)?, by top-1 and mAP, with the gains."""
    gain = {n: float(s.per_query(n).mean()) - float(s.per_query(n, "old").mean())
            for n in ("top1", "map")}
    return {"top1": gain["top1"] > 0, "map": gain["map"] > 0,
            "top1_gain": round(gain["top1"], 4), "map_gain": round(gain["map"], 4)}


def run(cfg: CompatBenchConfig) -> dict:
    t_start = time.perf_counter()
    train = scan(cfg.train_dir)
    test = align_classes(scan(cfg.test_dir, min_per_class=2), train.classes)
    n_classes = len(train.classes)
    n_old = max(1, int(round(cfg.old_classes * n_classes)))
    feats, timings = load_features(cfg, train, test)
    old_mask_train = train.labels < n_old
    old_mask_test = test.labels < n_old

    # The old model: trained on the old classes only.
    old_cfg = TrainConfig("independent", dim=cfg.dim, epochs=cfg.epochs,
                          **cfg.overrides.get("old", {}))
    old = train_head(old_cfg, feats.old_train[old_mask_train], train.labels[old_mask_train], n_old,
                     progress=cfg.progress)
    old_train_emb = old.embed(feats.old_train)
    old_test_emb = old.embed(feats.old_test)
    assert old.classifier is not None  # an independent head is trained with one
    classifiers = {"trained": old_classifier_rows(old_train_emb, train.labels, n_classes,
                                                  old.classifier.numpy()),
                   "prototypes": old_classifier_rows(old_train_emb, train.labels, n_classes)}
    if cfg.old_classifier not in (*classifiers, "both"):
        raise ValueError(f"old_classifier: trained, prototypes or both, not {cfg.old_classifier!r}")
    choices = list(classifiers) if cfg.old_classifier == "both" else [cfg.old_classifier]
    runs = [(m, c) for m in cfg.methods for c in (choices if m in ("bct", "pct") else choices[:1])]

    pairs: dict[str, dict] = {}
    own, labels = np.arange(len(test)), test.labels
    # old/old: the old side every pair is scored against
    ref = metrics.score(old_test_emb, old_test_emb, old_test_emb, old_test_emb, labels, labels,
                        own_index=own)
    pairs["old/old"] = pair_entry(ref, old_mask_test, side="old")
    criteria: dict[str, dict] = {}
    train_seconds = {"old": round(old.seconds, 2)}
    for method, choice in runs:
        mcfg = TrainConfig(method, dim=cfg.dim, epochs=cfg.epochs, loss=cfg.loss,
                           **cfg.overrides.get(method, {}))
        trained = train_head(mcfg, feats.new_train, train.labels, n_classes, old_emb=old_train_emb,
                             old_classifier=classifiers[choice], progress=cfg.progress)
        label = method if choice == "trained" or method not in ("bct", "pct") else f"{method}+proto"
        train_seconds[label] = round(trained.seconds, 2)
        q = trained.embed(feats.new_test)
        cross, same = metrics.ml_fct_pairs(old_test_emb, q, labels, old=ref.old)
        pairs[f"{label}/{label}"] = pair_entry(same, old_mask_test)
        pairs[f"{label}/old"] = pair_entry(cross, old_mask_test)
        criteria[label] = criterion(cross)
        if method == "procrustes" and cfg.slerp_t > 0:
            mixed = slerp(q, old_test_emb, cfg.slerp_t)  # needs the old model at query time
            r = metrics.score(old_test_emb, mixed, old_test_emb, old_test_emb, labels, labels,
                              own_index=own, old=ref.old)
            pairs["procrustes+slerp/old"] = pair_entry(r, old_mask_test)
            criteria["procrustes+slerp"] = criterion(r)
    return {
        "config": {"train": str(cfg.train_dir), "test": str(cfg.test_dir),
                   "old_backbone": cfg.old_backbone, "new_backbone": cfg.new_backbone,
                   "old_classes": cfg.old_classes, "n_classes": n_classes, "n_old_classes": n_old,
                   "train_images": len(train), "test_images": len(test), "dim": cfg.dim,
                   "epochs": cfg.epochs, "methods": list(cfg.methods), "loss": cfg.loss,
                   "old_classifier": cfg.old_classifier},
        "pairs": pairs,
        "criterion": criteria,
        "compatible_methods": [m for m in cfg.methods if m in COMPATIBLE_METHODS],
        "wall_times": {**timings, "train_s": train_seconds,
                       "total_s": round(time.perf_counter() - t_start, 1)},
    }
