"""ImageFolder datasets (one sub-folder per class), with clear errors for bad layouts."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DatasetError(ValueError):
    pass


def _photo(f: Path) -> bool:
    """A regular file with an image suffix: FIFOs, devices, sockets and folders named like
    photos are passed over (every read goes through imageio.read_photo_file as well)."""
    return f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and f.is_file()


@dataclass
class ImageFolder:
    root: Path
    files: list[Path]
    labels: np.ndarray  # int64 index into classes
    classes: list[str]

    def __len__(self) -> int:
        return len(self.files)


def scan(root: str | Path, min_per_class: int = 2, min_classes: int = 2,
         labelled: bool = True) -> ImageFolder:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"no such folder: {root}")
    if not labelled:
        files = sorted(f for f in root.rglob("*") if _photo(f))
        if len(files) < min_per_class:
            raise DatasetError(f"{root}: found {len(files)} images, need at least {min_per_class}")
        return ImageFolder(root, files, np.zeros(len(files), np.int64), ["unlabelled"])
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < min_classes:
        raise DatasetError(
            f"{root}: expected an ImageFolder layout (one sub-folder of images per class) with at "
            f"least {min_classes} classes; found {len(class_dirs)} sub-folders"
        )
    files, labels, classes = [], [], []
    for d in class_dirs:
        imgs = sorted(f for f in d.rglob("*") if _photo(f))
        if len(imgs) < min_per_class:
            raise DatasetError(f"class {d.name!r} has {len(imgs)} images; need at least {min_per_class}")
        classes.append(d.name)
        files += imgs
        labels += [len(classes) - 1] * len(imgs)
    return ImageFolder(root, files, np.array(labels, np.int64), classes)


def align_classes(data: ImageFolder, classes: list[str]) -> ImageFolder:
    """Relabel `data` with the class order of another split (test uses train's indices)."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(data.classes) - set(index))
    if unknown:
        raise DatasetError(f"{data.root}: classes not in the training set: {', '.join(unknown[:5])}")
    labels = np.array([index[data.classes[lab]] for lab in data.labels], np.int64)
    return ImageFolder(data.root, data.files, labels, classes)
