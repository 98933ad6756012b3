"""What the faces do with no gallery open: the models an installation can load, checking a
model or the paths of an ingest before anything is written, training a compatible model on a
dataset (`graceful train --old`) and the benchmarks (`graceful bench`). The faces call these
instead of importing `models.*`."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from search.errors import GalleryError


def available_models(home: Path | None = None) -> tuple[list, list[tuple[Path, str]]]:
    """Models this installation can load (built-ins, and the checkpoints in `home`/models),
    and the checkpoint files there that cannot be read, with why: no gallery is opened."""
    from models import registry

    dirs = [Path(home) / "models"] if home else []
    return registry.available(dirs), registry.unreadable(dirs)


def verify_model(name: str | None) -> None:
    """Load `name` (default: the default model) once, so that a bad one fails before a new
    gallery is created."""
    from models import registry

    try:
        registry.load(name or registry.DEFAULT_MODEL)
    except (registry.UnknownModelError, ValueError, RuntimeError) as e:
        raise GalleryError(str(e)) from None


def check_paths(paths: Iterable[str | Path]) -> None:
    """Refuse a missing path before anything is written (GalleryError)."""
    from search.storage.files import collect_files

    collect_files(paths)


def train_on_dataset(old: str, backbone: str, method: str, data: Path, out: str, home: Path,
                     eval_dir: Path | None = None, *, epochs: int = 30, head: str = "mlp",
                     lam: float = 1.0, loss: str = "ce", device: str = "cpu",
                     force: bool = False, finetune_blocks: int = 0, finetune_epochs: int = 1,
                     old_classifier: str = "trained") -> dict:
    """`graceful train --old OLD --data DIR`: a model compatible with OLD's vectors, saved in
    `home`/models; returns `path`, `name`, `space`, `dim`, `compatible_with`, `method`,
    `backbone`, `metrics`. A bad dataset or model is a GalleryError."""
    from models.compat_train import TrainRequest, train_compatible
    from models.train import TrainConfig

    req = TrainRequest(old, backbone, method, data, out, Path(home) / "models",
                       Path(home) / "cache", eval_dir,
                       TrainConfig(method, epochs=epochs, head=head, lam=lam, loss=loss,
                                   device=device),
                       progress=True, force=force, finetune_blocks=finetune_blocks,
                       finetune_epochs=finetune_epochs, old_classifier=old_classifier)
    try:
        path, meta = train_compatible(req)
    except (ValueError, RuntimeError) as e:  # models.imagefolder.DatasetError is a ValueError
        raise GalleryError(str(e)) from None
    return {"path": str(path), "name": meta.name, "space": meta.space, "dim": meta.dim,
            "compatible_with": meta.compatible_with, "method": meta.method,
            "backbone": meta.backbone, "metrics": meta.metrics}


def bench_compat(train: Path, test: Path, cache: Path, old_backbone: str = "lite0",
                 new_backbone: str = "lite2", old_classes: float = 0.5,
                 methods: tuple[str, ...] = (), dim: int = 256, epochs: int = 30,
                 loss: str = "ce", old_classifier: str = "trained") -> dict:
    """`graceful bench compat`: the compatibility benchmark (models.evaluation.compat)."""
    from models.evaluation.compat import CompatBenchConfig, run

    cfg = CompatBenchConfig(train, test, cache, old_backbone, new_backbone, old_classes,
                            methods, dim, epochs, loss=loss, old_classifier=old_classifier)
    try:
        return run(cfg)
    except ValueError as e:  # a bad dataset (models.imagefolder.DatasetError)
        raise GalleryError(str(e)) from None


def bench_generations(kind: str, train: Path, test: Path, cache: Path, loss: str = "ce") -> dict:
    """`graceful bench chain|hetero` (models.evaluation.generations), with progress bars."""
    from models.evaluation.generations import GenConfig, chain, hetero

    if kind not in ("chain", "hetero"):
        raise GalleryError(f"unknown benchmark {kind!r}: chain or hetero")
    return (chain if kind == "chain" else hetero)(GenConfig(train, test, cache, loss=loss))
