"""Fine-tuning the last blocks of the backbone together with the head (GPU recommended).

The default path trains heads on cached features of a frozen backbone; this one also unfreezes
the backbone's last `blocks` stages (and its final conv/BN), trains on augmented images, and
stores only the changed tensors in the checkpoint (`aux.backbone.*`), so the file stays a
fraction of the backbone's size. Works on the CPU too, slowly; pass device="cuda" on a GPU.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import transforms

from .embedder import Embedder
from .heads import build_head
from .train import (
    LABELLED_METHODS,
    TrainConfig,
    TrainedHead,
    _method_loss,
    fused_adamw,
    loo_correct,
    run_epochs,
)

BACKBONE_PREFIX = "backbone."


def tail_modules(model: torch.nn.Module, blocks: int) -> dict[str, torch.nn.Module]:
    """The last `blocks` stages of a timm EfficientNet plus its head conv and BN, by name."""
    if not hasattr(model, "blocks"):
        raise ValueError("fine-tuning supports EfficientNet-Lite backbones (lite0/1/2)")
    n = len(model.blocks)
    if not 1 <= blocks <= n:
        raise ValueError(f"--finetune-blocks must be between 1 and {n}")
    tail = {f"blocks.{i}": model.blocks[i] for i in range(n - blocks, n)}
    tail.update({"conv_head": model.conv_head, "bn2": model.bn2})
    return tail


def tail_state(model: torch.nn.Module, blocks: int) -> dict[str, torch.Tensor]:
    out = {}
    for prefix, module in tail_modules(model, blocks).items():
        for key, value in module.state_dict().items():
            out[f"{BACKBONE_PREFIX}{prefix}.{key}"] = value.detach().cpu().clone()
    return out


def apply_backbone_state(backbone: Embedder, tensors: dict[str, torch.Tensor]) -> Embedder:
    """A private copy of `backbone` with fine-tuned tensors loaded (the shared one is untouched)."""
    tuned: Any = copy.copy(backbone)  # an EfficientNet-Lite (tail_modules refuses others)
    tuned.model = copy.deepcopy(tuned.model)
    state = {k[len(BACKBONE_PREFIX):]: v for k, v in tensors.items()}
    missing, unexpected = tuned.model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"fine-tuned tensors do not fit {backbone.name}: {unexpected[:3]}")
    tuned.model.eval()
    if hasattr(tuned, "use_runtime"):  # a fast path exported from the old weights must not serve
        tuned.use_runtime(getattr(backbone, "requested_runtime", None))
    return tuned


def augment(size: int) -> transforms.Compose:
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.6, 1.0),
                                     interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    ])


def finetune(cfg: TrainConfig, backbone: Embedder, files: list[Path], labels: np.ndarray,
             n_classes: int, old_emb: np.ndarray | None, old_classifier: torch.Tensor | None,
             blocks: int, progress: bool = True, init: TrainedHead | None = None
             ) -> tuple[TrainedHead, dict[str, torch.Tensor]]:
    """`init`: a head (and classifier) already trained on cached features of the frozen
    backbone; fine-tuning then starts from it instead of from scratch (far fewer epochs)."""
    from .imageio import decode, read_photo_file
    from .pipeline import prefetch_map

    if cfg.method not in LABELLED_METHODS:
        raise ValueError(f"fine-tuning needs a labelled method ({', '.join(LABELLED_METHODS)})")
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    dev = torch.device(cfg.device)
    model = copy.deepcopy(backbone.model).to(dev)  # type: ignore[attr-defined]  # EfficientNet-Lite
    model.requires_grad_(False)
    tail = tail_modules(model, blocks)
    tail_params = [p for m in tail.values() for p in m.parameters()]
    for p in tail_params:
        p.requires_grad_(True)
    spec = cfg.head_spec(backbone.dim)
    head = build_head(spec).to(dev)
    classifier = torch.nn.Parameter(torch.randn(n_classes, cfg.dim, device=dev) * 0.01)
    if init is not None:
        head.load_state_dict(init.head.state_dict())
        assert init.classifier is not None  # a head trained by a labelled method has one
        with torch.no_grad():
            classifier.copy_(init.classifier.to(dev))
    opt = torch.optim.AdamW([
        {"params": [*head.parameters(), classifier], "lr": cfg.lr},
        {"params": tail_params, "lr": cfg.lr * 0.05},
    ], weight_decay=cfg.weight_decay, fused=fused_adamw(dev))
    size = backbone.info.image_size

    def load(i: int) -> torch.Tensor:  # decoded per batch: memory stays flat on large sets
        return aug(decode(read_photo_file(files[i]), size).image)
    y_all = torch.as_tensor(labels, device=dev)
    old_all = torch.as_tensor(old_emb, dtype=torch.float32, device=dev) if old_emb is not None else None
    w_old = old_classifier.to(dev) if old_classifier is not None else None
    old_right = None
    if cfg.method == "pct":
        if old_emb is None:  # as train_head says
            raise ValueError(f"method {cfg.method} needs the old model's embeddings")
        old_right = torch.as_tensor(loo_correct(old_emb, labels), device=dev)
    aug = augment(size)

    def train_mode() -> None:
        model.eval()  # frozen stages keep their BN statistics
        for m in tail.values():
            m.train()
        head.train()

    def embed(idx: torch.Tensor) -> torch.Tensor:
        batch = torch.stack(list(prefetch_map(load, idx.tolist())))
        feats = model.forward_head(model.forward_features(batch.to(dev)), pre_logits=True)
        return head(F.normalize(feats, dim=-1))

    history = run_epochs(
        cfg, len(files), embed,
        lambda idx, emb: _method_loss(cfg, emb, idx.to(dev), y_all, old_all, w_old, classifier,
                                      old_right),
        opt, before_epoch=train_mode, desc=f"fine-tuning {cfg.method} (+{blocks} blocks)",
        progress=progress)
    head.eval().cpu()
    model.eval().cpu()
    trained = TrainedHead(head, spec, classifier.detach().cpu(), cfg.method,
                          time.perf_counter() - t0, history)
    return trained, tail_state(model, blocks)
