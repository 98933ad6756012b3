"""open_clip embedders: an architecture plus a pretrained tag (hub, when online) or a local file.

Nothing here downloads unless the caller names a hub tag; a local checkpoint path never touches
the network, which is how the loading code is tested offline (random weights saved to a file).
"""
from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np
import torch

from .embedder import Embedder, ModelInfo, l2_normalise


def file_fingerprint(path: str, n: int = 12) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


class OpenClipEmbedder(Embedder):
    def __init__(self, arch: str, pretrained: str | None):
        import open_clip

        if arch not in open_clip.list_models():
            raise ValueError(f"open_clip has no architecture {arch!r}")
        weights_file = pretrained if pretrained and os.path.exists(pretrained) else None
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
        except Exception as e:  # hub unreachable, bad file, ...
            where = "local file" if weights_file else "pretrained tag (needs the model hub)"
            raise RuntimeError(
                f"could not load open_clip {arch} from {where} {pretrained!r}: {e}. "
                "Offline, pass a local checkpoint: openclip:ARCH:/path/to/weights.pt"
            ) from e
        self.model = model.eval()
        self.transform = preprocess
        self.tokenizer = open_clip.get_tokenizer(arch)
        dim = int(self.model.visual.output_dim)
        weights_id = (f"file-{file_fingerprint(weights_file)}" if weights_file
                      else (pretrained or "random"))
        name = f"openclip:{arch}:{pretrained or 'random'}"
        size = self.model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else int(size)
        self.info = ModelInfo(
            name=name,
            dim=dim,
            space=f"openclip:{arch}:{weights_id}",
            image_size=size,
            kind="open_clip",
            has_text=hasattr(self.model, "encode_text"),
            description=f"open_clip {arch} ({weights_id}), {dim}-d, image+text",
            extra={"runtime": "torch"},
        )

    def forward_features(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(batch)

    @torch.inference_mode()
    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        tokens = self.tokenizer(list(texts))
        return l2_normalise(self.model.encode_text(tokens)).cpu().numpy().astype(np.float32)
