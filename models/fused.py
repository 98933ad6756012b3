"""The embedder of fused search: both generations' query models, their vectors concatenated.

`FusedEmbedder(old, new, bridge)` embeds every image with both models and returns
`bridge.fuse(old, new, w)`; it lives in a space of its own (its name), whose stored vectors are
made from the old ones by `FusedTransform` (the new half: the photo's real new embedding where
the gallery has one, else the bridge's gallery map of the old vector).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from PIL import Image

from .bridge import BLEND_PREFIX, fuse, fused_name, parse_fused, split
from .embedder import Embedder, ModelInfo
from .transform import normalise


class _TwoModels(Embedder):
    """Two models that embed every image together (each preprocessing it at its own size):
    the old query model and a newer one, `weight` the old one's share."""

    def __init__(self, old: Embedder, new: Embedder, weight: float):
        self.old, self.new, self.weight = old, new, float(weight)
        self._old_shape: tuple[int, ...] | None = None
        self._new_shape: tuple[int, ...] | None = None
        self.transform = self._preprocess

    @property
    def runtime(self) -> str:
        return self.new.runtime

    def _preprocess(self, image: Image.Image) -> np.ndarray:
        """Both models' inputs, flattened into one array row (their sizes may differ)."""
        a, b = self.old.preprocess(image), self.new.preprocess(image)
        self._old_shape, self._new_shape = tuple(a.shape), tuple(b.shape)
        return np.concatenate([np.asarray(a, dtype=np.float32).ravel(),
                               np.asarray(b, dtype=np.float32).ravel()])

    def _embed_both(self, batch: Any) -> tuple[np.ndarray, np.ndarray]:
        if self._old_shape is None or self._new_shape is None:
            raise RuntimeError(f"{self.name}: preprocess images with it first")
        n_old = int(np.prod(self._old_shape))
        return (self.old.embed_batch(batch[:, :n_old].reshape(-1, *self._old_shape)),
                self.new.embed_batch(batch[:, n_old:].reshape(-1, *self._new_shape)))


class FusedEmbedder(_TwoModels):
    def __init__(self, old: Embedder, new: Embedder, bridge: Embedder, weight: float):
        super().__init__(old, new, weight)
        self.bridge = bridge
        self.info = ModelInfo(
            name=fused_name(old.name, bridge.name, self.weight), dim=old.dim + new.dim,
            space=fused_name(old.name, bridge.name, self.weight),
            image_size=max(old.info.image_size, new.info.image_size), kind="fused",
            has_text=old.info.has_text and new.info.has_text,
            description=f"{old.name} ({self.weight:.2f}) and {new.name} "
                        f"({1 - self.weight:.2f}) searched together",
            extra={"parts": [old.name, new.name], "weights": [self.weight, 1 - self.weight],
                   "spaces": [old.space, new.space], "bridge": bridge.name})

    @property
    def spaces(self) -> list[str]:
        return [self.old.space, self.new.space]

    def embed_batch(self, batch: Any) -> np.ndarray:
        return fuse(*self._embed_both(batch), self.weight)

    def embed_text(self, texts) -> np.ndarray:
        return fuse(self.old.embed_text(texts), self.new.embed_text(texts), self.weight)

    def parts(self, vectors: np.ndarray) -> list[tuple[Embedder, np.ndarray]]:
        """Each generation's own vectors inside fused ones (written to their spaces too)."""
        old, new = split(vectors, self.old.dim, self.weight)
        return [(self.old, old), (self.new, new)]

    def gallery_transform(self) -> "FusedTransform":
        return FusedTransform(self)


class FusedTransform:
    """Stored old vectors -> fused vectors: the new half is the photo's real new embedding when
    `known` has it, else the bridge's gallery map (origin 'map', with its expected residual)."""

    exact = False
    origin = "map"

    def __init__(self, model: FusedEmbedder):
        self.model = model
        inner = model.bridge.gallery_transform()  # type: ignore[attr-defined]
        if inner is None:
            raise ValueError(f"{model.bridge.name} carries no gallery map")
        self.map = inner
        self.new_space = model.new.space  # where the photos' real new vectors are kept
        self.spec = {**inner.spec, "kind": "fused", "weight": model.weight,
                     "input_space": inner.spec.get("input_space")}

    def input_models(self) -> set[str]:
        return set()

    def apply(self, old: np.ndarray) -> np.ndarray:
        return fuse(old, self.map.apply(old), self.model.weight)

    def apply_known(self, old: np.ndarray, new: np.ndarray) -> np.ndarray:
        return fuse(old, new, self.model.weight)

    def uncertainty(self, old: np.ndarray) -> np.ndarray:
        return self.map.uncertainty(old)


class BlendEmbedder(_TwoModels):
    """The old query model and a head compatible with its space, searched together over the
    stored vectors: normalise(w * old + (1 - w) * head). One query vector in the old space, so
    the gallery is untouched (an album-trained head's safer path, search.ops.fit_blend)."""

    def __init__(self, old: Embedder, head: Embedder, weight: float):
        if old.space != head.space:
            raise ValueError(f"{head.name} (space {head.space}) and {old.name} (space "
                             f"{old.space}) search different spaces: they cannot be blended")
        super().__init__(old, head, weight)
        self.info = ModelInfo(
            name=f"{BLEND_PREFIX}{old.name}+{head.name}@{self.weight:.2f}", dim=old.dim,
            space=old.space, image_size=max(old.info.image_size, head.info.image_size),
            kind="blend", description=f"{old.name} ({self.weight:.2f}) and {head.name} "
                                      f"({1 - self.weight:.2f}) queries together",
            compatible_with=tuple(head.info.compatible_with),
            extra={"parts": [old.name, head.name], "weights": [self.weight, 1 - self.weight],
                   "spaces": [old.space]})

    def embed_batch(self, batch: Any) -> np.ndarray:
        old, new = self._embed_both(batch)
        return normalise(self.weight * old + (1 - self.weight) * new).astype(np.float32)


def compose(name: str, load: Callable[[str], Embedder]) -> Embedder:
    """The model called `fused:OLD+BRIDGE@W` or `blend:OLD+HEAD@W`, its parts loaded by `load`
    (the registry's, or a test provider's)."""
    old, other, weight = parse_fused(name)
    part = load(other)
    if name.startswith(BLEND_PREFIX):
        return BlendEmbedder(load(old), part, weight)
    return FusedEmbedder(load(old), load(part.meta.backbone), part, weight)  # type: ignore[attr-defined]
