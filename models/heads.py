"""Small trainable maps that sit on a frozen backbone's features.

A head's architecture is fully described by a JSON-able dict (stored in checkpoints), so a
checkpoint can be rebuilt without executing pickled code.
"""
from __future__ import annotations

import torch
from torch import nn


class LinearHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class MLPHead(nn.Module):
    """Residual-free two-layer MLP; `negative_slope` > 0 gives the leaky-ReLU of LQF."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 1024, negative_slope: float = 0.0,
                 dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.LeakyReLU(negative_slope) if negative_slope > 0 else nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BlendHead(MLPHead):
    """A head on the very features a gallery stores (same space in and out): the output keeps a
    share `alpha` of the input itself, so a photo stays near where the old model put it and
    only moves as far as the learned part (the MLP) pulls it. The blend is what keeps searches
    that were right from losing their results (docs/BENCHMARKS.md section 13)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 1024, alpha: float = 0.5,
                 negative_slope: float = 0.0, dropout: float = 0.0):
        if in_dim != out_dim:
            raise ValueError("a blend head maps a space onto itself: in_dim must equal out_dim")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError("a blend head's alpha lies in [0, 1]")
        super().__init__(in_dim, out_dim, hidden, negative_slope, dropout)
        self.alpha = float(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        learned = nn.functional.normalize(self.net(x), dim=-1)
        return self.alpha * nn.functional.normalize(x, dim=-1) + (1 - self.alpha) * learned


HEADS = {"linear": LinearHead, "mlp": MLPHead, "blend": BlendHead}


def build_head(spec: dict) -> nn.Module:
    spec = dict(spec)
    kind = spec.pop("type")
    if kind not in HEADS:
        raise ValueError(f"unknown head type {kind!r}; known: {sorted(HEADS)}")
    return HEADS[kind](**spec)
