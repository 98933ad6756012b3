"""A trained head applied with numpy: what serving a checkpoint needs, without torch.

The heads are trained as torch modules (models/heads.py); a checkpoint stores their weights
under the modules' own names (`proj.weight`, `net.0.weight`, ...). At inference a head is one
or two matrix products, so a checkpoint on an ONNX Runtime backbone serves with numpy end to
end, and a process that only searches, ingests or backfills never imports torch.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from .checkpoint import head_shapes
from .transform import normalise


class NumpyHead:
    """`spec` (a checkpoint's head spec, validated by models.checkpoint.head_shapes) with its
    weights; called on (N, in_dim) float32 features, gives (N, out_dim) float32."""

    def __init__(self, spec: dict, state: Mapping[str, np.ndarray]):
        self.kind = spec["type"]
        shapes = head_shapes(spec)  # the tensors the spec implies (CheckpointError: a ValueError)
        missing, unexpected = set(shapes) - set(state), set(state) - set(shapes)
        if missing or unexpected:
            raise ValueError(f"missing {sorted(missing)}, unexpected {sorted(unexpected)}")
        self.weights = {k: np.ascontiguousarray(np.asarray(state[k], np.float32)) for k in shapes}
        for k, w in self.weights.items():
            if w.shape != shapes[k]:
                raise ValueError(f"{k} is {tuple(w.shape)}, the spec says {shapes[k]}")
        self.slope = float(spec.get("negative_slope", 0.0))
        self.alpha = float(spec.get("alpha", 0.5))

    def _affine(self, x: np.ndarray, layer: str) -> np.ndarray:
        y = x @ self.weights[f"{layer}.weight"].T
        bias = self.weights.get(f"{layer}.bias")
        return y if bias is None else y + bias

    def _mlp(self, x: np.ndarray) -> np.ndarray:
        h = self._affine(x, "net.0")
        h = np.where(h > 0, h, h * self.slope) if self.slope > 0 else np.maximum(h, 0)
        return self._affine(h, "net.3")  # dropout (net.2) is the identity at inference

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if self.kind == "linear":
            return self._affine(x, "proj")
        if self.kind == "mlp":
            return self._mlp(x)
        return self.alpha * normalise(x) + (1 - self.alpha) * normalise(self._mlp(x))

