"""Embedders, the registry and the checkpoint format, with real weights (no downloads)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import registry
from models.checkpoint import CheckpointError, load_checkpoint, read_meta
from models.compatible import HeadEmbedder
from models.imageio import decode


def photos(folder: Path, n: int = 4) -> list[Image.Image]:
    return [decode(p.read_bytes()).image for p in sorted(folder.iterdir())[:n]]


def test_lite0_embeds_normalised_and_knows_imagenet(lite0, few_photos):
    ims = photos(few_photos / "airplanes")
    v = lite0.embed_images(ims)
    assert v.shape == (4, 1280) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    logits = lite0.classify(lite0.collate([lite0.preprocess(i) for i in ims]))
    # ImageNet classes for aircraft: 404 airliner, 895 warplane, 908 wing, 405 airship, 408 amphibian
    assert sum(int(c) in {404, 895, 908, 405, 408} for c in logits.argmax(1)) >= 3


def test_registry_refuses_unknown_names():
    with pytest.raises(registry.UnknownModelError, match="unknown model 'resnet9000'.*lite0"):
        registry.resolve("resnet9000")
    with pytest.raises(registry.UnknownModelError):
        registry.resolve("openclip:")


def test_open_clip_from_local_file_offline(tmp_path, few_photos):
    import open_clip

    torch.manual_seed(0)
    model, _, _ = open_clip.create_model_and_transforms("ViT-S-32", pretrained=None)
    weights = tmp_path / "vit-s-32-random.pt"
    torch.save(model.state_dict(), weights)
    emb = registry.load(f"openclip:ViT-S-32:{weights}")
    assert emb.info.has_text and emb.info.kind == "open_clip"
    assert emb.space.startswith("openclip:ViT-S-32:file-")
    img = emb.embed_images(photos(few_photos / "sunflower", 2))
    txt = emb.embed_text(["a sunflower", "a motorbike"])
    assert img.shape == txt.shape == (2, emb.dim)
    assert np.allclose(np.linalg.norm(txt, axis=1), 1, atol=1e-5)
    # the file's weights were really used: same as the in-memory model
    with torch.no_grad():
        x = torch.as_tensor(emb.collate([emb.preprocess(i) for i in photos(few_photos / "sunflower", 2)]))
        ref = torch.nn.functional.normalize(model.eval().encode_image(x), dim=-1).numpy()
    assert np.allclose(img, ref, atol=1e-4)


def test_open_clip_hub_tag_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="local checkpoint"):
        registry.load("openclip:ViT-S-32:no-such-tag")


def test_checkpoint_round_trip_and_refusals(tmp_path, lite0, few_photos, make_checkpoint):
    path = tmp_path / "tiny.safetensors"
    meta = make_checkpoint(path)
    assert read_meta(path) == meta
    got_meta, state = load_checkpoint(path)
    emb = HeadEmbedder(lite0, got_meta, state)
    v = emb.embed_images(photos(few_photos / "airplanes", 2))
    assert v.shape == (2, 64) and emb.space == "lite0" and emb.info.compatible_with == ("lite0",)

    with pytest.raises(CheckpointError, match="backbone 'lite2'"):
        bad = tmp_path / "wrong-backbone.safetensors"
        make_checkpoint(bad, backbone="lite2")
        HeadEmbedder(lite0, *load_checkpoint(bad))
    with pytest.raises(CheckpointError, match="expects 512-d"):
        bad = tmp_path / "wrong-dim.safetensors"
        make_checkpoint(bad, in_dim=512)
        HeadEmbedder(lite0, *load_checkpoint(bad))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError):
        read_meta(corrupt)
    not_ours = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(not_ours))
    with pytest.raises(CheckpointError, match="not a Graceful checkpoint"):
        read_meta(not_ours)


def test_checkpoints_are_found_by_name(tmp_path, make_checkpoint):
    make_checkpoint(tmp_path / "x.safetensors", name="my-upgrade")
    entry = registry.resolve("my-upgrade", [tmp_path])
    assert entry.kind == "compatible" and entry.space == "lite0" and entry.dim == 64
    assert "my-upgrade" in [e.name for e in registry.available([tmp_path])]
    emb = registry.load("my-upgrade", [tmp_path])
    assert emb.dim == 64
