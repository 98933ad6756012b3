"""Backbone features a model can take from the gallery's feature cache instead of decoding.

A checkpoint's head on a backbone it did not fine-tune embeds a photo as head(backbone
features), and the feature cache (`GalleryCore.cache_dir`: HOME/cache or GRACEFUL_FEATURES,
keyed by backbone name and photo sha256) holds the backbone features that fits, bridges and
pre-flights computed. The pre-flight and the embedding jobs (backfill, reembed) reuse them."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from search.core import GalleryCore

if TYPE_CHECKING:
    from models.compatible import HeadEmbedder
    from models.embedder import Embedder
    from models.features import FeatureCache


def head_on_frozen_backbone(model: Embedder) -> HeadEmbedder | None:
    """`model` when it is a head on a backbone it did not fine-tune, else None."""
    from models.compatible import HeadEmbedder

    if isinstance(model, HeadEmbedder) and model.frozen_backbone is not None:
        return model
    return None


def backbone_cache(gallery: GalleryCore, head: HeadEmbedder) -> FeatureCache:
    from models.features import FeatureCache

    assert head.frozen_backbone is not None
    return FeatureCache(gallery.cache_dir, head.frozen_backbone.name)


def projected(head: HeadEmbedder, cache: FeatureCache, shas: list[str]) -> np.ndarray:
    """The model's vectors of these photos from their cached backbone features."""
    if not shas:
        return np.zeros((0, head.dim), np.float32)
    return head.project(cache.get(shas))
