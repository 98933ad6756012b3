"""An embedder made of a frozen backbone embedder and a trained head from a checkpoint."""
from __future__ import annotations

import torch

from .checkpoint import AUX, CheckpointError, CheckpointMeta
from .embedder import Embedder, ModelInfo, l2_normalise
from .heads import build_head


class HeadEmbedder(Embedder):
    def __init__(self, backbone: Embedder, meta: CheckpointMeta, state: dict[str, torch.Tensor]):
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
        tuned = {k[len(AUX):]: v for k, v in state.items() if k.startswith(AUX + "backbone.")}
        if tuned:  # the checkpoint fine-tuned the backbone's last blocks
            from .finetune import apply_backbone_state

            try:
                backbone = apply_backbone_state(backbone, tuned)
            except (ValueError, RuntimeError) as e:
                raise CheckpointError(f"checkpoint {meta.name!r}: {e}") from e
        self.backbone = backbone
        self.head = build_head(meta.head)
        self.aux = {k[len(AUX):]: v for k, v in state.items()
                    if k.startswith(AUX) and not k.startswith(AUX + "backbone.")}
        try:
            self.head.load_state_dict({k: v for k, v in state.items() if not k.startswith(AUX)})
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {meta.name!r}: weights do not fit its head: {e}") from e
        self.head.eval()
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
    def runtime(self) -> str:
        """The backbone's runtime (the head is a small torch map either way)."""
        return self.backbone.runtime

    def forward_features(self, batch: torch.Tensor) -> torch.Tensor:
        return self.head(l2_normalise(self.backbone.forward_features(batch)))

    def project(self, backbone_vectors: torch.Tensor) -> torch.Tensor:
        """Cached (normalised) backbone features -> this model's normalised embeddings."""
        with torch.inference_mode():
            return l2_normalise(self.head(backbone_vectors))

    def gallery_transform(self):
        """How this model moves a gallery's stored vectors into its own space, or None: a
        `GalleryTransform` (see models.transform)."""
        from .transform import GalleryTransform, LinearMap

        spec = self.meta.transform or {}
        if spec.get("kind") == "head":
            return GalleryTransform(spec, lambda x: self.project(torch.as_tensor(x)).numpy(), None)
        if spec.get("kind") == "linear":
            m = LinearMap.from_tensors({k: v.numpy() for k, v in self.aux.items()
                                        if k.startswith("transform.")}, spec)
            return GalleryTransform(spec, m.apply, m.uncertainty)
        return None
