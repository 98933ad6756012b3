"""Losses for compatible training (pure functions of tensors).

All classifiers are cosine classifiers: logits = scale * normalise(embedding) . normalise(W)^T.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_logits(embeddings: torch.Tensor, weights: torch.Tensor, scale: float) -> torch.Tensor:
    return scale * F.normalize(embeddings, dim=-1) @ F.normalize(weights, dim=-1).T


def influence_loss(new_emb: torch.Tensor, old_classifier: torch.Tensor, labels: torch.Tensor,
                   scale: float, classify=F.cross_entropy) -> torch.Tensor:
    """BCT: the new embedding must be classified correctly by the *frozen* old classifier
    (`classify`: cross-entropy, or LQF's least squares on the logits)."""
    return classify(cosine_logits(new_emb, old_classifier.detach(), scale), labels)


def least_squares(cosines: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """LQF's least-squares classification loss: regress the cosine scores (in [-1, 1]) onto
    one-hot targets."""
    target = F.one_hot(labels, cosines.shape[-1]).float()
    return (cosines - target).pow(2).sum(-1).mean()


def l2_compat_loss(new_emb: torch.Tensor, old_emb: torch.Tensor) -> torch.Tensor:
    """Regress normalised new embeddings onto the old ones (the l2 baseline, and adapters)."""
    return (F.normalize(new_emb, dim=-1) - F.normalize(old_emb, dim=-1)).pow(2).sum(-1).mean()


def focal_distillation(new_logits: torch.Tensor, old_logits: torch.Tensor, labels: torch.Tensor,
                       alpha: float = 1.0, beta: float = 5.0, temperature: float = 1.0
                       ) -> torch.Tensor:
    """PCT's focal distillation: KL(old || new) weighted alpha + beta * [old was right]."""
    old_right = (old_logits.argmax(-1) == labels).float()
    weights = alpha + beta * old_right
    kl = F.kl_div(F.log_softmax(new_logits / temperature, -1),
                  F.log_softmax(old_logits.detach() / temperature, -1),
                  log_target=True, reduction="none").sum(-1)
    return (weights * kl).mean() * temperature ** 2


def focal_feature_distillation(new_emb: torch.Tensor, old_emb: torch.Tensor, old_right: torch.Tensor,
                               alpha: float = 0.0, beta: float = 1.0) -> torch.Tensor:
    """Stay close to the old embedding where the old model was right (per-sample weights)."""
    weights = alpha + beta * old_right.float()
    dist = (F.normalize(new_emb, dim=-1) - F.normalize(old_emb.detach(), dim=-1)).pow(2).sum(-1)
    return (weights * dist).mean()


def info_nce(new_emb: torch.Tensor, old_emb: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Contrastive alignment: each mapped new embedding must pick its own old one in the batch."""
    logits = F.normalize(new_emb, dim=-1) @ F.normalize(old_emb.detach(), dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(new_emb), device=new_emb.device))


def class_mean_classifier(old_emb: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Synthesised old-classifier rows: the normalised mean old embedding of each class."""
    emb = F.normalize(old_emb.float(), dim=-1)
    sums = torch.zeros(n_classes, emb.shape[1]).index_add_(0, labels, emb)
    counts = torch.bincount(labels, minlength=n_classes).clamp(min=1).unsqueeze(1)
    return F.normalize(sums / counts, dim=-1)


def focal_rank_distillation(new_emb: torch.Tensor, old_emb: torch.Tensor, weights: torch.Tensor,
                            temperature: float = 0.05) -> torch.Tensor:
    """Retrieval-aware focal distillation: within the batch, the new query's similarity
    distribution over the *old* embeddings (the gallery it will search) must match the old
    query's, weighted per sample (alpha + beta * [old was right]). Self-matches are masked."""
    old = F.normalize(old_emb.detach(), dim=-1)
    mask = torch.eye(len(old), dtype=torch.bool, device=old.device)
    target = (old @ old.T / temperature).masked_fill(mask, -1e4)
    pred = (F.normalize(new_emb, dim=-1) @ old.T / temperature).masked_fill(mask, -1e4)
    kl = F.kl_div(F.log_softmax(pred, -1), F.log_softmax(target, -1), log_target=True,
                  reduction="none").sum(-1)
    return (weights * kl).mean()


def relational_distillation(new_emb: torch.Tensor, old_emb: torch.Tensor,
                            temperature: float = 0.1) -> torch.Tensor:
    """Keep the old model's neighbourhoods among the new embeddings: within the batch, each
    item's similarity distribution over the others (new vs new) must match the old one's (old vs
    old). Labels cannot see this: it keeps what albums coarser than the searches would erase."""
    new = F.normalize(new_emb, dim=-1)
    old = F.normalize(old_emb.detach(), dim=-1)
    mask = torch.eye(len(new), dtype=torch.bool, device=new.device)
    target = (old @ old.T / temperature).masked_fill(mask, -1e4)
    pred = (new @ new.T / temperature).masked_fill(mask, -1e4)
    return F.kl_div(F.log_softmax(pred, -1), F.log_softmax(target, -1), log_target=True,
                    reduction="batchmean")
