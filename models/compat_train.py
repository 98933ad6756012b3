"""`graceful train --data`: a model compatible with an existing one, trained on an ImageFolder
dataset. The dataset's adapter to the one training core (models/training.py): it scans the
folder and runs both models on its files; the core trains the head and saves the checkpoint."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import metrics, registry, training
from .checkpoint import CheckpointMeta
from .compatible import HeadEmbedder
from .embedder import Embedder
from .features import extract, file_shas
from .imagefolder import align_classes, scan
from .train import COMPATIBLE_METHODS, LABELLED_METHODS, TrainConfig, old_classifier_rows


@dataclass
class TrainRequest:
    old: str
    backbone: str
    method: str
    data: Path
    out: str
    models_dir: Path
    cache_dir: Path
    eval_dir: Path | None = None
    config: TrainConfig | None = None
    progress: bool = True
    force: bool = False
    finetune_blocks: int = 0  # > 0: also fine-tune the backbone's last blocks (GPU recommended)
    finetune_epochs: int = 1
    old_classifier: str = "trained"  # or "prototypes": class means of old embeddings everywhere


def old_classifier_for(old: Embedder, classes: list[str], old_emb: np.ndarray,
                       labels: np.ndarray, prototypes_only: bool = False) -> torch.Tensor:
    """Trained rows where the old checkpoint stored a classifier for a class, else class means
    (with `prototypes_only`, class means for every class)."""
    rows = old_classifier_rows(old_emb, labels, len(classes))
    if not prototypes_only and isinstance(old, HeadEmbedder) and "classifier" in old.aux and old.meta.classes:
        known = {c: i for i, c in enumerate(old.meta.classes)}
        stored = torch.nn.functional.normalize(torch.as_tensor(old.aux["classifier"]).float(), dim=-1)
        for i, c in enumerate(classes):
            if c in known:
                rows[i] = stored[known[c]]
    return rows


def evaluate_pairs(old_q: np.ndarray, new_q: np.ndarray, labels: np.ndarray) -> dict:
    """ml-fct's old/old, new/old and new/new, leave-one-out (`metrics.ml_fct_pairs`)."""
    names = ("top1", "top5", "map")
    cross, same = metrics.ml_fct_pairs(old_q, new_q, labels)
    old_top1, new_top1, same_top1 = cross.old.top1, cross.new.top1, same.new.top1
    assert old_top1 is not None and new_top1 is not None and same_top1 is not None  # labelled
    assert cross.old.ap is not None and cross.new.ap is not None
    return {"old/old": cross.side("old", names),
            "new/old": {**cross.side("new", names), **metrics.flip_rates(old_top1, new_top1)},
            "new/new": {**same.side("new", names), **metrics.flip_rates(old_top1, same_top1)},
            "criterion_top1": bool(new_top1.mean() > old_top1.mean()),
            "criterion_map": bool(cross.new.ap.mean() > cross.old.ap.mean())}


def train_compatible(req: TrainRequest) -> tuple[Path, CheckpointMeta]:
    """The dataset's entry point into the training core (models/training.py): the ImageFolder
    scanned, both models run on its files (feature cache), the old checkpoint's classifier rows
    kept where it has them; then, beyond the core, optional fine-tuning and the `--eval` pairs."""
    labelled = req.method in LABELLED_METHODS
    data = scan(req.data, labelled=labelled, min_per_class=2 if labelled else 16)
    dest, backbone = training.validate(
        req.out, req.models_dir, [e.name for e in registry.available([req.models_dir])],
        replace=req.force, replace_option="--force",
        load_backbone=lambda: registry.load(req.backbone, [req.models_dir]))
    old = registry.load(req.old, [req.models_dir])
    t0 = time.perf_counter()
    shas = file_shas(data.files)
    old_emb = extract(old, data.files, req.cache_dir, progress=req.progress, shas=shas)
    compatible = req.method in COMPATIBLE_METHODS
    cfg = req.config or TrainConfig(req.method)
    cfg.method = req.method
    if compatible:
        cfg.dim = old.dim
    w_old = old_classifier_for(old, data.classes, old_emb, data.labels,
                               req.old_classifier == "prototypes") if labelled else None
    feats = extract(backbone, data.files, req.cache_dir, progress=req.progress, shas=shas)
    inputs = training.TrainingSet(feats, old_emb, data.labels if labelled else None, data.classes,
                                  shas, w_old)
    trained = training.train(cfg, inputs, progress=req.progress)
    tuned_state: dict = {}
    new_backbone = backbone
    if req.finetune_blocks:
        # Stage 2: unfreeze the last blocks, starting from the head trained on cached features.
        from dataclasses import replace

        from .finetune import apply_backbone_state, finetune

        ft_cfg = replace(cfg, epochs=req.finetune_epochs, lr=cfg.lr * 0.1)
        trained, tuned_state = finetune(ft_cfg, backbone, data.files, data.labels,
                                        len(data.classes), old_emb, w_old, req.finetune_blocks,
                                        req.progress, init=trained)
        new_backbone = apply_backbone_state(backbone, tuned_state)
    metrics_out: dict = {"train_seconds": round(trained.seconds, 2),
                         "total_seconds": round(time.perf_counter() - t0, 2)}
    if req.eval_dir:
        test = scan(req.eval_dir)
        if labelled:
            test = align_classes(test, data.classes)
        old_q = extract(old, test.files, req.cache_dir, progress=req.progress)
        if req.finetune_blocks:  # a tuned backbone's features are not the cached ones
            from .imageio import decode, read_photo_file

            new_q = trained.embed(new_backbone.embed_images(
                [decode(read_photo_file(f), backbone.info.image_size).image for f in test.files]))
        else:
            new_q = trained.embed(extract(backbone, test.files, req.cache_dir, progress=req.progress))
        metrics_out["eval"] = {"data": str(req.eval_dir), "images": len(test),
                               **evaluate_pairs(old_q, new_q, test.labels)}
    target = (training.Target.compatible(req.out, dest, backbone.name, old.name, old.space,
                                         old.info.compatible_with) if compatible
              else training.Target.independent(req.out, dest, backbone.name, old))
    return training.save(  # tuned_state: "backbone.<module>.<tensor>"
        target, trained, cfg, inputs, metrics=metrics_out, source={"data": str(req.data)},
        details={"finetune_blocks": req.finetune_blocks,
                 "finetune_epochs": req.finetune_epochs if req.finetune_blocks else 0},
        aux=tuned_state)
