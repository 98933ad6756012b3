"""Fakes for the fast tier: numpy embedders, a model provider holding them, synthetic photos.

No torch: the engine reaches its models through a provider (`Gallery.open(home, models=...)`),
and these embedders compute with numpy alone, so ingest, search, upgrade, transform, fused
serving, backfill, re-embed, compare and check all run on a few dozen generated photos in
milliseconds.

Every fake "backbone" sees the same thing: the photo shrunk to 8x8 RGB, projected to 16
features by one fixed matrix. Each model maps those 16 features to its own space by a fixed
matrix of its own (seeded by its name), then L2-normalises. So:
  fake-a       the base model (space fake-a, 32-d; a text tower that knows colour words)
  fake-a2      a compatible upgrade (space fake-a: fake-a's matrix plus a little noise)
  fake-rogue   claims space fake-a but is unrelated to it (the pre-flight refuses it)
  fake-a-head  a head on fake-a (space fake-a): its gallery transform is exact (`head`)
  fake-a-map   a compatible model whose gallery transform is a learned linear map (`map`)
  fake-b       another space (fake-b, 24-d)
  fake-b-bridge  a label-free bridge from fake-a to fake-b (what `train --from-gallery
               --backbone fake-b` would save): queries by a map into fake-a, the gallery map
               into fake-b; its plan recommends the fused path
  fused:... / blend:...  composed from the above by models.fused.compose, as the registry does
Photos: `make_photos(folder, albums, per_album)` writes small PNG/JPEG files, one folder (album)
per colour, each photo its colour with its own noise and gradient.
"""
from __future__ import annotations

import functools
import hashlib
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from models.checkpoint import CheckpointMeta
from models.embedder import Embedder, ModelInfo
from models.registry import ModelEntry, UnknownModelError
from models.transform import GalleryTransform, LinearMap, normalise

THUMB = 8  # photos are seen as 8x8 RGB
FEATURES = 16  # the shared "backbone" features every fake model projects from
IMAGE_SIZE = 32
COLOURS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 60, 200),
           "yellow": (220, 200, 40), "purple": (140, 50, 160)}


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big"))


# Seconds per photo (and per transformed vector) a fake takes: CLI processes killed mid-job in
# tests/test_kill_stores.py set it so that the kill lands inside the job.
DELAY = float(os.environ.get("GRACEFUL_FAKE_DELAY") or 0)

BACKBONE = _rng("backbone").normal(size=(THUMB * THUMB * 3, FEATURES)).astype(np.float32) / 8


def features(image: Image.Image) -> np.ndarray:
    """The shared features of a photo: 8x8 RGB in [-0.5, 0.5], projected to FEATURES."""
    thumb = image.convert("RGB").resize((THUMB, THUMB), Image.Resampling.BILINEAR)
    return (np.asarray(thumb, np.float32).ravel() / 255.0 - 0.5) @ BACKBONE


def matrix(name: str, dim: int) -> np.ndarray:
    return _rng(name).normal(size=(FEATURES, dim)).astype(np.float32)


def weight(name: str) -> np.ndarray:
    """A base fake's matrix: features -> its space."""
    if name == "fake-a-map":  # near fake-a: its queries search fake-a's vectors
        return matrix("fake-a", 32) + 0.3 * matrix("fake-a-map", 32)
    return matrix(name, 24 if name == "fake-b" else 32)


class FakeEmbedder(Embedder):
    """features -> normalise(features @ weight), then `post` (a head, a query map) if given."""

    def __init__(self, name: str, space: str, weight: np.ndarray, *, post=None,
                 has_text: bool = False, meta: CheckpointMeta | None = None,
                 transform: GalleryTransform | None = None, kind: str = "fake"):
        self.weight = weight
        self.post = post
        self.meta = meta
        self._transform = transform
        self.info = ModelInfo(name=name, dim=self._out_dim(), space=space,
                              image_size=IMAGE_SIZE, kind=kind, has_text=has_text,
                              compatible_with=(space,), description=f"numpy fake ({space})")
        self.calls = 0  # images embedded, for tests that check what was (not) recomputed

    def _out_dim(self) -> int:
        probe = normalise(np.ones((1, FEATURES), np.float32) @ self.weight)
        return int((self.post(probe) if self.post else probe).shape[1])

    @property
    def runtime(self) -> str:
        return "numpy"

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return features(image)

    def collate(self, items: Sequence[Any]) -> np.ndarray:
        return np.stack(items)

    def embed_batch(self, batch: Any) -> np.ndarray:
        self.calls += len(batch)
        time.sleep(DELAY * len(batch))
        v = normalise(np.asarray(batch, np.float32) @ self.weight)
        if self.post is not None:
            v = normalise(self.post(v))
        return v.astype(np.float32)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        if not self.info.has_text:
            return super().embed_text(texts)
        return self.embed_images([Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE),
                                            COLOURS.get(t.strip().lower(), (0, 0, 0)))
                                  for t in texts])

    def gallery_transform(self) -> GalleryTransform | None:
        return self._transform


@functools.cache
def linear_map(source: str, target: str) -> LinearMap:
    """A least-squares map from model `source`'s vectors to `target`'s (both linear in the same
    features, so it is close to exact), with a per-vector expected residual; learned once per
    process from 300 random "photos" through both."""
    a, b = weight(source), weight(target)
    x = _rng("pairs").normal(size=(300, FEATURES)).astype(np.float32)
    old, new = normalise(x @ a), normalise(x @ b + 0.05 * _rng("residual").normal(size=(300, b.shape[1])))
    def ridge(x: np.ndarray, y: np.ndarray) -> np.ndarray:  # stable off the pairs' span
        x64 = x.astype(np.float64)
        return np.linalg.solve(x64.T @ x64 + 1e-2 * np.eye(x.shape[1]), x64.T @ y)

    w = ridge(old, new)
    residual = 1 - (normalise(old @ w) * new).sum(1)
    rw = ridge(old, residual - residual.mean())
    spec = {"kind": "linear", "map": "ridge", "lambda": 0.01, "in_dim": a.shape[1],
            "out_dim": b.shape[1], "pairs": len(x), "exact": False,
            "oof_cosine": round(float(1 - residual.mean()), 4)}
    zero_in, zero_out = np.zeros(a.shape[1], np.float32), np.zeros(b.shape[1], np.float32)
    return LinearMap(w.astype(np.float32), zero_in, zero_out, rw.astype(np.float32),
                     float(residual.mean()), 0.0, spec)


def _paced(apply):
    def paced(x: np.ndarray) -> np.ndarray:
        time.sleep(DELAY * len(x))
        return apply(x)
    return paced if DELAY else apply


def _build(name: str) -> Embedder:
    wa = weight("fake-a")
    if name == "fake-a":
        return FakeEmbedder(name, "fake-a", wa, has_text=True)
    if name == "fake-a2":
        return FakeEmbedder(name, "fake-a", wa + 0.15 * matrix("fake-a2", 32), kind="compatible")
    if name == "fake-rogue":
        return FakeEmbedder(name, "fake-a", matrix("fake-rogue", 32), kind="compatible")
    if name == "fake-a-head":
        h = (np.eye(32) + 0.3 * _rng("head").normal(size=(32, 32)) / np.sqrt(32)).astype(np.float32)
        spec = {"kind": "head", "input_models": ["fake-a"], "input_space": "fake-a"}
        return FakeEmbedder(name, "fake-a", wa, post=lambda v: v @ h, kind="compatible",
                            transform=GalleryTransform(spec, _paced(lambda x: normalise(x @ h)), None))
    if name == "fake-a-map":
        wm = weight("fake-a-map")
        gmap = linear_map("fake-a", "fake-a-map")
        spec = {**gmap.spec, "input_space": "fake-a"}
        return FakeEmbedder(name, "fake-a", wm, kind="compatible",
                            transform=GalleryTransform(spec, _paced(gmap.apply), gmap.uncertainty))
    wb = weight("fake-b")
    if name == "fake-b":
        return FakeEmbedder(name, "fake-b", wb, has_text=True)
    if name == "fake-b-bridge":
        gmap, qmap = linear_map("fake-a", "fake-b"), linear_map("fake-b", "fake-a")
        spec = {**gmap.spec, "input_space": "fake-a", "output_space": "fake-b",
                "target_model": "fake-b"}
        return FakeEmbedder(name, "fake-a", wb, post=qmap.apply, kind="compatible",
                            meta=bridge_meta(name, spec),
                            transform=GalleryTransform(spec, _paced(gmap.apply), gmap.uncertainty))
    raise UnknownModelError(f"unknown model {name!r}")


BASE = ("fake-a", "fake-a2", "fake-rogue", "fake-a-head", "fake-a-map", "fake-b", "fake-b-bridge")


def bridge_meta(name: str, transform: dict) -> CheckpointMeta:
    """What a bridge checkpoint's header says: its plan recommends fused at weight 0.5."""
    def row(path: str, **extra) -> dict:
        return {"path": path, "verdict": "no worse", "flags": [], "kept_old": 0.8,
                "kept_old_se": 0.05, **extra}
    plan = [row("keep"), row("queries"), row("transform"), row("fused", weight=0.5)]
    return CheckpointMeta(
        name=name, backbone="fake-b", dim=32, space="fake-a", compatible_with=["fake-a"],
        method="bridge", head={"type": "linear", "in_dim": 24, "out_dim": 32},
        old_model="fake-a", created_at=1.0, transform=transform,
        metrics={"bridge": {"recommended": "fused", "weight": 0.5, "plan": plan,
                            "photos_embedded": 0, "recommendation": "fused keeps most"}})


class FakeModels:
    """A model provider (models.registry.Models) of numpy fakes: each model built once per
    provider. `missing`: names it pretends not to know (a lost checkpoint)."""

    default = "fake-a"

    def __init__(self, missing: Sequence[str] = ()):
        self.missing = set(missing)
        self.loaded: dict[str, Embedder] = {}

    def _known(self, name: str) -> None:
        if name in self.missing or (name not in BASE and not name.startswith(("fused:", "blend:"))):
            raise UnknownModelError(f"unknown model {name!r}. Known: {', '.join(BASE)}")

    def resolve(self, name: str, dirs: list[Path] | None = None) -> ModelEntry:
        self._known(name)
        if name.startswith(("fused:", "blend:")):
            from models.bridge import parse_fused

            try:
                old, other, _ = parse_fused(name)
            except ValueError as e:
                raise UnknownModelError(str(e)) from None
            self.resolve(old)
            part = self.resolve(other)
            if name.startswith("blend:"):
                return ModelEntry(name, "blend", part.space, part.dim, "")
            return ModelEntry(name, "fused", name, None, "")
        model = self.load(name)
        meta = getattr(model, "meta", None)
        return ModelEntry(name, model.info.kind, model.space, model.dim, "fake",
                          model.info.compatible_with, meta)

    def load(self, name: str, dirs: list[Path] | None = None) -> Embedder:
        self._known(name)
        if name not in self.loaded:
            if name.startswith(("fused:", "blend:")):
                from models.fused import compose

                try:
                    self.loaded[name] = compose(name, self.load)
                except ValueError as e:
                    raise UnknownModelError(str(e)) from None
            else:
                self.loaded[name] = _build(name)
        return self.loaded[name]

    def available(self, dirs: list[Path] | None = None) -> list[ModelEntry]:
        return [self.resolve(n) for n in BASE if n not in self.missing]

    def unreadable(self, dirs: list[Path] | None = None) -> list[tuple[Path, str]]:
        return []


# -- synthetic photos -------------------------------------------------------------------------

def photo(colour: str, seed: int, size: int = IMAGE_SIZE) -> Image.Image:
    """A photo of `colour`: its own noise, a gradient in its own direction and a patch of a
    random colour somewhere (so photos of one album are alike, not the same)."""
    rng = np.random.default_rng(seed)
    base = np.array(COLOURS[colour], np.float32)
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None] * rng.uniform(10, 30)
    pixels = base + ramp + rng.normal(0, 12, size=(size, size, 3)) + rng.normal(0, 8, size=3)
    w, h = rng.integers(size // 4, size // 2, size=2)
    x, y = rng.integers(0, size - w), rng.integers(0, size - h)
    pixels[y:y + h, x:x + w] = rng.uniform(0, 255, size=3)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_photos(folder: Path, albums: Sequence[str] = ("red", "green", "blue", "yellow"),
                per_album: int = 10, seed: int = 0) -> Path:
    """`per_album` photos per colour under folder/<colour>/ (every third one a JPEG)."""
    for a, colour in enumerate(albums):
        (folder / colour).mkdir(parents=True, exist_ok=True)
        for i in range(per_album):
            image = photo(colour, seed * 10_000 + a * 1000 + i)
            ext, fmt = (".jpg", "JPEG") if i % 3 == 2 else (".png", "PNG")
            image.save(folder / colour / f"{colour}-{i:02d}{ext}", fmt, quality=95)
    return folder


ALBUMS = ("red", "green", "blue", "yellow")  # the fast tier's gallery: 4 albums x 12 photos
PER_ALBUM = 12


def open_fake(home: Path, models: FakeModels | None = None, store: str = "faiss", **kwargs):
    """`Gallery.open(home, models=FakeModels())`; a new gallery on `store` (default FAISS,
    whatever GRACEFUL_STORE says)."""
    from search.api import Gallery

    return Gallery.open(home, models=models or FakeModels(), store=store, **kwargs)


def photo_bytes(colour: str, seed: int) -> bytes:
    import io

    buf = io.BytesIO()
    photo(colour, seed).save(buf, "PNG")
    return buf.getvalue()


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI process on these fakes: GRACEFUL_MODELS names FakeModels (as a
    user names their own embedders) and this folder joins PYTHONPATH so that it imports."""
    tests = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "GRACEFUL_HOME": str(home), "GRACEFUL_MODELS": "fakes:FakeModels",
            "PYTHONPATH": path, **extra}
