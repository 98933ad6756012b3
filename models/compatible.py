"""An embedder made of a frozen backbone embedder and a trained head from a checkpoint.

The head runs in numpy (models/head_numpy.py): on an ONNX Runtime backbone the whole model
serves without torch. A checkpoint that fine-tuned its backbone's last blocks needs the torch
backbone, as before."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .checkpoint import AUX, CheckpointError, CheckpointMeta
from .embedder import Embedder, ModelInfo
from .head_numpy import NumpyHead
from .transform import normalise


class HeadEmbedder(Embedder):
    def __init__(self, backbone: Embedder, meta: CheckpointMeta, state: Mapping[str, Any]):
        if backbone.name != meta.backbone:
            raise CheckpointError(
                f"checkpoint {meta.name!r} sits on backbone {meta.backbone!r}, not {backbone.name!r}"
            )
        head_in = meta.head.get("in_dim")
        if head_in != backbone.dim:
            raise CheckpointError(
                f"checkpoint {meta.name!r} expects {head_in}-d backbone features; "
                f"{backbone.name} gives {backbone.dim}-d"
            )
        if meta.head.get("out_dim") != meta.dim:
            raise CheckpointError(f"checkpoint {meta.name!r}: head output is not its declared dimension")
        state = {k: np.asarray(v, np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v)
                 for k, v in state.items()}
        tuned = {k[len(AUX):]: v for k, v in state.items() if k.startswith(AUX + "backbone.")}
        if tuned:  # the checkpoint fine-tuned the backbone's last blocks
            import torch

            from .finetune import apply_backbone_state

            try:
                backbone = apply_backbone_state(
                    backbone, {k: torch.from_numpy(v) for k, v in tuned.items()})
            except (ValueError, RuntimeError) as e:
                raise CheckpointError(f"checkpoint {meta.name!r}: {e}") from e
        self.backbone = backbone
        self.tuned = bool(tuned)
        self.aux = {k[len(AUX):]: v for k, v in state.items()
                    if k.startswith(AUX) and not k.startswith(AUX + "backbone.")}
        try:
            self.head = NumpyHead(meta.head, {k: v for k, v in state.items() if not k.startswith(AUX)})
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {meta.name!r}: weights do not fit its head: {e}") from e
        self.meta = meta
        self.transform = backbone.transform
        self.info = ModelInfo(
            name=meta.name,
            dim=meta.dim,
            space=meta.space,
            image_size=backbone.info.image_size,
            kind="compatible",
            has_text=False,
            compatible_with=tuple(meta.compatible_with),
            description=f"{meta.method} head on {meta.backbone} -> space {meta.space}",
            extra={"method": meta.method, "old_model": meta.old_model, "metrics": meta.metrics,
                   "runtime": backbone.runtime},
        )

    @property
    def frozen_backbone(self) -> Embedder | None:
        """The backbone, when the checkpoint did not fine-tune it: its features are then those
        of every other use of that backbone (a fit, a bridge), so they may come from the
        gallery's feature cache, which is keyed by the backbone's name."""
        return None if self.tuned else self.backbone

    @property
    def runtime(self) -> str:
        """The backbone's runtime (the head is a small numpy map either way)."""
        return self.backbone.runtime

    def forward_features(self, batch: Any) -> Any:
        """The head on the normalised backbone features; a tensor batch gives a tensor."""
        feats = self.backbone.forward_features(batch)
        if isinstance(feats, np.ndarray):
            return self.head(normalise(feats))
        import torch

        out = self.head(normalise(feats.detach().float().cpu().numpy()))
        return torch.from_numpy(out).to(feats.device)

    def embed_batch(self, batch: Any) -> np.ndarray:
        if isinstance(batch, np.ndarray) and self.backbone.runtime == "onnxruntime":
            return self.project(self.backbone.embed_batch(batch))  # numpy end to end
        return super().embed_batch(batch)

    def project(self, backbone_vectors: Any) -> np.ndarray:
        """Cached (normalised) backbone features -> this model's normalised embeddings."""
        return normalise(self.head(np.asarray(backbone_vectors, np.float32))).astype(np.float32)

    def gallery_transform(self):
        """How this model moves a gallery's stored vectors into its own space, or None: a
        `GalleryTransform` (see models.transform)."""
        from .transform import GalleryTransform, LinearMap

        spec = self.meta.transform or {}
        if spec.get("kind") == "head":
            return GalleryTransform(spec, self.project, None)
        if spec.get("kind") == "linear":
            m = LinearMap.from_tensors({k: v for k, v in self.aux.items()
                                        if k.startswith("transform.")}, spec)
            return GalleryTransform(spec, m.apply, m.uncertainty)
        return None
