"""Golden embeddings (open_clip style): the real backbones' vectors of four Caltech-101 photos
are stored in tests/golden/ (float16, a few KB per model), and the default tier embeds the same
photos again through the product's path (bounded read, decode, preprocess, the runtime it
chooses) and wants every vector back within cosine 0.999. A change of weights, preprocessing,
decoding or runtime that moves the vectors shows up here, not as a quietly worse gallery.

After a deliberate change, regenerate them (torch runtime, the reference):
    PYTHONPATH=. python3 tests/test_golden.py [MODEL ...]      (default: lite0 lite2)
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden"
MODELS = ("lite0", "lite2")
PHOTOS = ("test/airplanes/image_0003.jpg", "test/Motorbikes/image_0004.jpg",
          "test/sunflower/image_0003.jpg", "test/watch/image_0005.jpg")
MIN_COSINE = 0.999


def caltech() -> Path:
    from conftest import CALTECH

    return CALTECH


def photo_files() -> list[Path]:
    files = [caltech() / p for p in PHOTOS]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        pytest.fail(f"golden photos not found: {missing} (set GRACEFUL_CALTECH)")
    return files


def embed(model, files: list[Path]) -> np.ndarray:
    """The product's path for a query photo: bounded read, decode at the model's size, embed."""
    from models.imageio import decode, read_photo_file

    images = [decode(read_photo_file(f), target_size=model.info.image_size).image for f in files]
    return model.embed_images(images)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def regenerate(names: list[str]) -> None:
    """Embed the photos with each model on the torch runtime and store the vectors."""
    import torch

    from models.efficientnet import EfficientNetLite

    files = photo_files()
    GOLDEN.mkdir(exist_ok=True)
    index_path = GOLDEN / "golden.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"models": {}}
    index["photos"] = [{"path": p, "sha256": sha256(f)} for p, f in zip(PHOTOS, files)]
    for name in names:
        model = EfficientNetLite(name, runtime="torch")
        vectors = embed(model, files)
        np.save(GOLDEN / f"{name}.npy", vectors.astype(np.float16))
        index["models"][name] = {"file": f"{name}.npy", "dim": int(vectors.shape[1]),
                                 "runtime": "torch", "torch": torch.__version__}
        print(f"{name}: {vectors.shape} -> {GOLDEN / f'{name}.npy'}")
    index_path.write_text(json.dumps(index, indent=1) + "\n")


@pytest.mark.parametrize("name", MODELS)
def test_real_backbones_reproduce_their_golden_embeddings(name):
    from models import registry

    index = json.loads((GOLDEN / "golden.json").read_text())
    files = photo_files()
    changed = [p["path"] for p, f in zip(index["photos"], files) if sha256(f) != p["sha256"]]
    assert not changed, f"the golden photos changed ({changed}): regenerate (see the docstring)"
    expected = np.load(GOLDEN / index["models"][name]["file"]).astype(np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    model = registry.load(name)
    got = embed(model, files)
    assert got.shape == expected.shape and got.dtype == np.float32
    cosines = (got * expected).sum(1)
    assert cosines.min() >= MIN_COSINE, (
        f"{name} ({model.runtime}) moved from its golden embeddings: cosines {cosines.round(5)}")
    # and the four photos stay told apart (a constant output would match nothing else)
    off_diagonal = (got @ got.T)[~np.eye(len(got), dtype=bool)]
    assert off_diagonal.max() < 0.95


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    regenerate(sys.argv[1:] or list(MODELS))
