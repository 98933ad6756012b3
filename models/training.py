"""The one training core: a compatible head from a training set, and its checkpoint.

Two entry points feed it. `graceful train --data` (models/compat_train.py) scans an ImageFolder
and runs both models on its files; `graceful train --from-gallery` (search/ops/fit.py) samples
the gallery's photos, runs the new backbone on them and takes the stored vectors as the old
side. Both then hand over the same thing, a `TrainingSet` (per photo: new-backbone features, the
old model's embedding, its class, its bytes' hash) with a `TrainConfig`, and this module checks
the new model's name and backbone (`validate`), trains the head (`train`: `models.train`'s
methods, the old classifier from the set) and writes the checkpoint (`save`). What each entry
point adds stays with it: the dataset's evaluation and fine-tuning, or the gallery's held-out
measurement, upgrade plan and refusal.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from .checkpoint import NAME_RE, SUFFIX, CheckpointMeta, fingerprint, save_checkpoint
from .compatible import HeadEmbedder
from .embedder import Embedder
from .train import LABELLED_METHODS, TrainConfig, TrainedHead, old_classifier_rows, train_head


class TrainingError(ValueError):
    """The model cannot be trained as asked (its name, its backbone); the message says why."""


def validate(name: str, models_dir: Path, taken: Iterable[str], *, replace: bool,
             replace_option: str, load_backbone: Callable[[], Embedder]) -> tuple[Path, Embedder]:
    """(the new model's file, its backbone), checked before anything is trained: a plain name,
    no model of that name there unless `replace` (the command's `replace_option` says how), not
    the name of another model (`taken`: every model the caller can load), and a base model as
    backbone (loaded last, by `load_backbone`). TrainingError otherwise."""
    if not NAME_RE.match(name):
        raise TrainingError(f"model name {name!r}: use letters, digits, '_', '.', '-' (max 64)")
    dest = models_dir / f"{name}{SUFFIX}"
    if dest.exists() and not replace:
        raise TrainingError(f"a model called {name!r} already exists ({dest}); choose another "
                            f"--out or replace it ({replace_option})")
    if name in set(taken) and not dest.exists():
        raise TrainingError(f"{name!r} is already the name of another model")
    backbone = load_backbone()
    if isinstance(backbone, HeadEmbedder):
        raise TrainingError("the backbone must be a base model (lite0/1/2 or open_clip), not a "
                            "trained head")
    return dest, backbone


@dataclass
class TrainingSet:
    """What a head learns from, wherever it came from: per photo (rows in the same order) the
    new backbone's features, the old model's embedding, its class (index into `classes`; None
    for label-free methods) and the sha256 of its bytes (the checkpoint's data fingerprint).
    `old_classifier`: bct/pct's frozen old classifier; None = one prototype per class, the mean
    of its old embeddings."""
    features: np.ndarray
    old: np.ndarray
    labels: np.ndarray | None
    classes: list[str]
    shas: list[str]
    old_classifier: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.features)

    def old_classifier_rows(self) -> torch.Tensor | None:
        """The old classifier labelled methods are trained against (None without labels)."""
        if self.labels is None:
            return None
        if self.old_classifier is not None:
            return self.old_classifier
        return old_classifier_rows(self.old, self.labels, len(self.classes))

    def rows(self, rows: np.ndarray) -> "TrainingSet":
        """These rows alone, with the whole set's classes and old classifier."""
        return TrainingSet(self.features[rows], self.old[rows],
                           None if self.labels is None else self.labels[rows], self.classes,
                           [self.shas[i] for i in rows], self.old_classifier_rows())


def train(cfg: TrainConfig, data: TrainingSet, progress: bool = False) -> TrainedHead:
    """The head `cfg` describes, trained on `data` (labels only for labelled methods)."""
    labelled = cfg.method in LABELLED_METHODS
    return train_head(cfg, data.features, data.labels if labelled else None, len(data.classes),
                      old_emb=data.old, old_classifier=data.old_classifier_rows() if labelled
                      else None, progress=progress)


@dataclass(frozen=True)
class Target:
    """What the new checkpoint declares: its name and file, its backbone, the model it was
    trained against, the space it serves in and the spaces it is compatible with."""
    name: str
    dest: Path
    backbone: str
    old_model: str
    space: str
    compatible_with: list[str]

    @classmethod
    def compatible(cls, name: str, dest: Path, backbone: str, old_model: str, space: str,
                   old_compatible_with: Iterable[str]) -> "Target":
        """A model that searches `space` (the old model's) with the stored old vectors, and every
        space the old model itself was compatible with."""
        return cls(name, dest, backbone, old_model, space, sorted({space, *old_compatible_with}))

    @classmethod
    def independent(cls, name: str, dest: Path, backbone: str, old: Embedder) -> "Target":
        """A model of a space of its own (trained next to the old one, not against it)."""
        return cls(name, dest, backbone, old.name, name, [])


def save(target: Target, trained: TrainedHead, cfg: TrainConfig, data: TrainingSet, *,
         metrics: dict, source: dict, details: dict | None = None, transform: dict | None = None,
         aux: dict | None = None) -> tuple[Path, CheckpointMeta]:
    """Write the checkpoint: the head, its classifier (labelled methods) and `aux` tensors (a
    fine-tuned backbone's, a gallery transform's), with the metadata every trained model
    carries. `source`: where the training set came from (the metadata's `training`, after the
    config), `details`: what follows the command there."""
    meta = CheckpointMeta(
        name=target.name, backbone=target.backbone, dim=cfg.dim, space=target.space,
        compatible_with=target.compatible_with, method=cfg.method, head=trained.head_spec,
        old_model=target.old_model, data_fingerprint=fingerprint(sorted(data.shas)),
        metrics=metrics, classes=data.classes if trained.classifier is not None else [],
        training={"config": cfg.as_dict(), **source, "images": len(data),
                  "classes": len(data.classes), "command": " ".join(sys.argv), **(details or {})},
        transform=transform or {})
    tensors = {"classifier": trained.classifier} if trained.classifier is not None else {}
    tensors.update(aux or {})
    return save_checkpoint(target.dest, meta, trained.head, aux=tensors), meta
