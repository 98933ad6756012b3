"""Training heads on cached backbone features: independent, l2, bct, pct, adapter, procrustes.

Everything here is CPU-first: backbones stay frozen, their (normalised) features come from the
feature cache, and a head trains in seconds to a minute. Pass device="cuda" to use a GPU.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import losses
from .heads import build_head

LABELLED_METHODS = ("independent", "l2", "bct", "pct")
UNLABELLED_METHODS = ("adapter", "procrustes")
METHODS = LABELLED_METHODS + UNLABELLED_METHODS
COMPATIBLE_METHODS = ("l2", "bct", "pct", "adapter", "procrustes")


@dataclass
class TrainConfig:
    method: str
    dim: int = 256
    head: str = "mlp"
    hidden: int = 1024
    epochs: int = 30
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    scale: float = 16.0  # cosine-classifier temperature
    lam: float = 1.0  # weight of the compatibility term (influence / l2)
    # PCT: focal distillation = stay close to the old model where it was right (alpha + beta *
    # [old right], "right" = its leave-one-out neighbour on the training set has the label).
    # The feature term is on by default; the KL ("kl", Yan et al.) and in-batch ranking ("rank")
    # terms are available but traded away more positive than negative flips here
    # (docs/BENCHMARKS.md), so their weight defaults to 0.
    pct_beta: float = 1.0
    pct_alpha: float = 0.0
    pct_weight: float = 0.0
    pct_feature_weight: float = 0.2
    pct_temperature: float = 1.0
    pct_mode: str = "rank"  # "rank": retrieval-aware (default); "kl": classifier KL (Yan et al.)
    pct_rank_temperature: float = 0.05
    nce_temperature: float = 0.02
    # Relational distillation (new/new neighbourhoods follow old/old ones, any labelled method):
    # off for `graceful train`, on for fits to a gallery, whose albums may be coarser than what
    # users search for.
    rel_weight: float = 0.0
    rel_temperature: float = 0.1
    # "ce": cross-entropy; "lqf": LQF-style linearised fine-tuning of the head: leaky-ReLU MLP,
    # least-squares loss on the (cosine) logits against one-hot targets, Adam's diagonal
    # preconditioning (Achille et al. use a Kronecker-factored one; see docs/BENCHMARKS.md).
    loss: str = "ce"
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.loss not in ("ce", "lqf"):
            raise ValueError(f"unknown loss {self.loss!r}; choose ce or lqf")

    def head_spec(self, in_dim: int) -> dict:
        if self.head == "linear":
            return {"type": "linear", "in_dim": in_dim, "out_dim": self.dim}
        spec = {"type": "mlp", "in_dim": in_dim, "out_dim": self.dim, "hidden": self.hidden}
        if self.loss == "lqf":
            spec["negative_slope"] = 0.1
        return spec

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainedHead:
    head: torch.nn.Module
    head_spec: dict
    classifier: torch.Tensor | None  # (classes, dim) cosine classifier in the output space
    method: str
    seconds: float
    history: list[float] = field(default_factory=list)

    @torch.no_grad()
    def embed(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
        self.head.eval()
        return F.normalize(self.head(x), dim=-1).numpy()


def old_classifier_rows(old_emb: np.ndarray, labels: np.ndarray, n_classes: int,
                        trained: np.ndarray | None = None) -> torch.Tensor:
    """The frozen old classifier over all classes: trained rows where the old model had them,
    the class mean of old embeddings (normalised) for classes it never saw."""
    rows = losses.class_mean_classifier(torch.as_tensor(old_emb), torch.as_tensor(labels), n_classes)
    if trained is not None:
        rows[: len(trained)] = F.normalize(torch.as_tensor(trained, dtype=torch.float32), dim=-1)
    return rows


def procrustes(new_feats: np.ndarray, old_emb: np.ndarray) -> torch.nn.Module:
    """Training-free orthogonal map: argmin ||X W - Y|| with W^T W = I (semi-orthogonal)."""
    u, _, vt = np.linalg.svd(new_feats.T.astype(np.float64) @ old_emb.astype(np.float64),
                             full_matrices=False)
    w = (u @ vt).astype(np.float32)  # (d_new, d_old)
    head = build_head({"type": "linear", "in_dim": w.shape[0], "out_dim": w.shape[1], "bias": False})
    with torch.no_grad():
        head.proj.weight.copy_(torch.from_numpy(w.T))
    return head


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation between unit rows a (t=0) and b (t=1)."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    omega = np.arccos(np.clip((a * b).sum(-1, keepdims=True), -1, 1))
    so = np.sin(omega)
    out = np.where(so > 1e-6, (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.maximum(so, 1e-6),
                   (1 - t) * a + t * b)
    return out / np.linalg.norm(out, axis=-1, keepdims=True)


def train_head(cfg: TrainConfig, features: np.ndarray, labels: np.ndarray | None = None,
               n_classes: int = 0, old_emb: np.ndarray | None = None,
               old_classifier: torch.Tensor | None = None, progress: bool = False) -> TrainedHead:
    """Train a head on frozen features. Which inputs are needed depends on the method:

    independent: labels;  l2: labels + old_emb;  bct: labels + old_classifier;
    pct: labels + old_emb + old_classifier;  adapter, procrustes: old_emb only (no labels).
    """
    t0 = time.perf_counter()
    if cfg.method in LABELLED_METHODS and labels is None:
        raise ValueError(f"method {cfg.method} needs labelled data")
    if cfg.method in ("l2", "pct", "adapter", "procrustes") and old_emb is None:
        raise ValueError(f"method {cfg.method} needs the old model's embeddings")
    if cfg.method in ("bct", "pct") and old_classifier is None:
        raise ValueError(f"method {cfg.method} needs the old classifier")
    if cfg.method == "procrustes":
        assert old_emb is not None
        head = procrustes(features, old_emb)
        return TrainedHead(head, {"type": "linear", "in_dim": features.shape[1],
                                  "out_dim": old_emb.shape[1], "bias": False},
                           None, cfg.method, time.perf_counter() - t0)

    torch.manual_seed(cfg.seed)
    dev = torch.device(cfg.device)
    x_all = torch.as_tensor(features, dtype=torch.float32, device=dev)
    y_all = torch.as_tensor(labels, device=dev) if labels is not None else None
    old_all = torch.as_tensor(old_emb, dtype=torch.float32, device=dev) if old_emb is not None else None
    w_old = old_classifier.to(dev) if old_classifier is not None else None
    old_right_all = None
    if cfg.method == "pct":
        assert old_emb is not None and labels is not None
        old_right_all = torch.as_tensor(loo_correct(old_emb, labels), device=dev)
    spec = cfg.head_spec(features.shape[1])
    head = build_head(spec).to(dev)
    params = list(head.parameters())
    classifier = None
    if cfg.method in LABELLED_METHODS:
        classifier = torch.nn.Parameter(torch.randn(n_classes, cfg.dim, device=dev) * 0.01)
        params.append(classifier)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=fused_adamw(dev))
    n = len(x_all)
    steps = cfg.epochs * math.ceil(n / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1)
    history = run_epochs(
        cfg, n, lambda idx: head(x_all[idx.to(dev)]),
        lambda idx, emb: _method_loss(cfg, emb, idx.to(dev), y_all, old_all, w_old, classifier,
                                      old_right_all),
        opt, sched, before_epoch=head.train, desc=f"training {cfg.method}", progress=progress)
    head.eval().cpu()
    return TrainedHead(head, spec, classifier.detach().cpu() if classifier is not None else None,
                       cfg.method, time.perf_counter() - t0, history)


def fused_adamw(dev: torch.device) -> bool:
    """AdamW's fused kernel where torch has one (CPU and CUDA): the same update in one kernel
    per tensor instead of ~10 ops, a fifth less time for a head's training on one CPU thread."""
    return dev.type in ("cpu", "cuda")


def run_epochs(cfg: TrainConfig, n: int, embed: Callable[[torch.Tensor], torch.Tensor],
               loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               opt: torch.optim.Optimizer, sched=None, before_epoch: Callable[[], object] | None = None,
               desc: str = "training", progress: bool = False) -> list[float]:
    """The one training loop (heads on cached features, and fine-tuning on images): epochs of
    seeded shuffled mini-batches of item indices, one optimiser step each; returns the mean loss
    per epoch. `embed(idx)` gives the batch's embeddings, `loss_of(idx, emb)` its loss."""
    steps = cfg.epochs * math.ceil(n / cfg.batch_size)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    bar = tqdm(total=steps, desc=desc, disable=not progress, unit="step")
    history = []
    for _ in range(cfg.epochs):
        if before_epoch is not None:
            before_epoch()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for s in range(0, n, cfg.batch_size):
            idx = perm[s:s + cfg.batch_size]
            loss = loss_of(idx, embed(idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += float(loss.detach()) * len(idx)
            bar.update(1)
        history.append(total / n)
    bar.close()
    return history


def loo_correct(emb: np.ndarray, labels: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Whether each item's nearest *other* item (leave-one-out) has its label: where the old
    model "was right" as a retrieval system. Unlike its classifier on its own training data,
    this is not saturated, so it separates the samples worth protecting."""
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    out = np.empty(len(emb), bool)
    for s in range(0, len(emb), chunk):
        sims = emb[s:s + chunk] @ emb.T
        sims[np.arange(len(sims)), s + np.arange(len(sims))] = -np.inf
        out[s:s + chunk] = labels[sims.argmax(1)] == labels[s:s + chunk]
    return out


def _method_loss(cfg: TrainConfig, emb, idx, y_all, old_all, w_old, classifier,
                 old_right_all=None) -> torch.Tensor:
    if cfg.method == "adapter":
        old = old_all[idx]
        return losses.l2_compat_loss(emb, old) + losses.info_nce(emb, old, cfg.nce_temperature)
    y = y_all[idx]
    if cfg.loss == "lqf":
        def classify(logits, target):
            return losses.least_squares(logits / cfg.scale, target)
    else:
        classify = F.cross_entropy
    loss = classify(losses.cosine_logits(emb, classifier, cfg.scale), y)
    if cfg.method == "l2":
        loss = loss + cfg.lam * losses.l2_compat_loss(emb, old_all[idx])
    elif cfg.method in ("bct", "pct"):
        # the influence loss: the frozen old classifier must classify the new embedding
        loss = loss + cfg.lam * losses.influence_loss(emb, w_old, y, cfg.scale, classify)
    if cfg.rel_weight and old_all is not None:
        loss = loss + cfg.rel_weight * losses.relational_distillation(emb, old_all[idx],
                                                                      cfg.rel_temperature)
    if cfg.method == "pct":
        old = old_all[idx]
        old_logits = losses.cosine_logits(old, w_old, cfg.scale)
        old_right = old_right_all[idx]
        if cfg.pct_mode == "kl":
            new_logits = losses.cosine_logits(emb, w_old, cfg.scale)
            loss = loss + cfg.pct_weight * losses.focal_distillation(
                new_logits, old_logits, y, cfg.pct_alpha, cfg.pct_beta, cfg.pct_temperature)
        else:
            weights = cfg.pct_alpha + cfg.pct_beta * old_right.float()
            loss = loss + cfg.pct_weight * losses.focal_rank_distillation(
                emb, old, weights, cfg.pct_rank_temperature)
        if cfg.pct_feature_weight:
            loss = loss + cfg.pct_feature_weight * losses.focal_feature_distillation(emb, old, old_right)
    return loss
