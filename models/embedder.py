"""The one interface every embedder implements.

An embedder turns RGB images (and, when it has a text tower, strings) into L2-normalised
float32 vectors that live in a named embedding *space*. Two models whose vectors may be
compared share a space; that is the whole contract Graceful's upgrades rely on.

Importing this module does not import torch: the engine needs only the interface (name, space,
dim, preprocess, collate, embed_batch), so an embedder that computes with numpy alone (the
fast tier's fakes, tests/fakes.py) runs every engine operation without it. The torch models
(models/efficientnet.py, models/openclip.py, models/compatible.py) import it themselves.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

K = TypeVar("K")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    dim: int
    space: str
    image_size: int
    kind: str  # "efficientnet", "open_clip", "compatible"
    has_text: bool = False
    compatible_with: tuple[str, ...] = ()
    description: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["compatible_with"] = list(self.compatible_with)
        return d


def l2_normalise(x: "torch.Tensor") -> "torch.Tensor":
    import torch

    return torch.nn.functional.normalize(x.float(), dim=-1)


class Embedder:
    """Base class: subclasses set `info`, `transform` and implement `forward_features`."""

    info: ModelInfo
    transform: Callable[[Image.Image], Any]

    def forward_features(self, batch: "torch.Tensor") -> "torch.Tensor":  # pragma: no cover
        raise NotImplementedError

    @property
    def runtime(self) -> str:
        """What computes forward_features: "torch" or "onnxruntime"."""
        return "torch"

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def dim(self) -> int:
        return self.info.dim

    @property
    def space(self) -> str:
        return self.info.space

    def preprocess(self, image: Image.Image) -> Any:
        from .imageio import bounded_aspect

        return self.transform(bounded_aspect(image))  # images handed in directly, too

    def collate(self, items: Sequence[Any]) -> Any:
        """Preprocessed images -> one batch for `embed_batch`: a stacked array where preprocess
        gives numpy arrays, else a stacked tensor."""
        if items and isinstance(items[0], np.ndarray):
            return np.stack(items)
        import torch

        return torch.stack(list(items))

    def embed_batch(self, batch: Any) -> np.ndarray:
        """Preprocessed batch (N,3,H,W; an array or a tensor) -> (N, dim) L2-normalised float32."""
        import torch

        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(batch)
        with torch.inference_mode():
            if self.runtime == "torch":  # onnxruntime takes plain NCHW
                batch = batch.contiguous(memory_format=torch.channels_last)
            out = self.forward_features(batch)
            return l2_normalise(out).cpu().numpy().astype(np.float32, copy=False)

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 16) -> np.ndarray:
        chunks = []
        for i in range(0, len(images), batch_size):
            batch = self.collate([self.preprocess(im) for im in images[i : i + batch_size]])
            chunks.append(self.embed_batch(batch))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError(f"model {self.name!r} has no text tower; search by image instead")


def embed_batches(model: Embedder, pairs: Iterable[tuple[K, Any]], batch_size: int = 16
                  ) -> Iterator[tuple[list[K], np.ndarray]]:
    """The one embed-in-batches loop: (key, preprocessed tensor) pairs in, (keys, L2-normalised
    vectors) out per batch of `batch_size` (the last one may be smaller). Ingest, backfill,
    re-embed and feature extraction all run through it."""
    keys: list[K] = []
    tensors: list[Any] = []
    for key, tensor in pairs:
        keys.append(key)
        tensors.append(tensor)
        if len(tensors) == batch_size:
            yield keys, model.embed_batch(model.collate(tensors))
            keys, tensors = [], []
    if tensors:
        yield keys, model.embed_batch(model.collate(tensors))
