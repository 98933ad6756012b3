"""Graceful checkpoints: one small safetensors file per trained head, metadata inside.

Loading never executes pickled code (safetensors holds only tensors and a str->str header).
The header says which backbone the head sits on, which space its vectors live in, which model
it was made compatible with, how it was trained and what it measured.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field, asdict
from pathlib import Path

from typing import TYPE_CHECKING

from safetensors import SafetensorError as SafetensorsError
from safetensors import safe_open

if TYPE_CHECKING:
    import torch

FORMAT = "graceful-checkpoint/1"
SUFFIX = ".safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, of another format, or mismatching."""


@dataclass
class CheckpointMeta:
    name: str
    backbone: str
    dim: int
    space: str
    compatible_with: list[str]
    method: str
    head: dict
    old_model: str | None = None
    data_fingerprint: str = ""
    metrics: dict = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    notes: str = ""
    classes: list[str] = field(default_factory=list)  # rows of the stored classifier, if any
    training: dict = field(default_factory=dict)  # config, data, command

    def to_header(self) -> dict[str, str]:
        header = {"format": FORMAT}
        for key, value in asdict(self).items():
            header[key] = json.dumps(value)
        return header

    @classmethod
    def from_header(cls, header: dict[str, str], source: str) -> "CheckpointMeta":
        if header.get("format") != FORMAT:
            raise CheckpointError(f"{source}: not a Graceful checkpoint (format {header.get('format')!r})")
        try:
            values = {k: json.loads(header[k]) for k in cls.__dataclass_fields__ if k in header}
            return cls(**values)
        except (TypeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{source}: damaged checkpoint header: {e}") from e


AUX = "aux."  # tensors that are not part of the head (e.g. aux.classifier)


def save_checkpoint(path: str | os.PathLike, meta: CheckpointMeta, head: torch.nn.Module,
                    half: bool = True, aux: dict[str, torch.Tensor] | None = None) -> Path:
    """Atomic write: a crash leaves either no file or a complete one."""
    from safetensors.torch import save

    from .fsutil import atomic_write_bytes

    path = Path(path)
    state = dict(head.state_dict())
    state.update({AUX + k: v for k, v in (aux or {}).items()})
    tensors = {
        k: (v.half() if half and v.is_floating_point() else v).contiguous()
        for k, v in state.items()
    }
    atomic_write_bytes(path, save(tensors, metadata=meta.to_header()))
    os.chmod(path, 0o644)
    return path


def read_meta(path: str | os.PathLike) -> CheckpointMeta:
    try:
        with safe_open(str(path), framework="numpy") as f:  # the header only: no torch needed
            header = f.metadata() or {}
    except (SafetensorsError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint: {e}") from e
    return CheckpointMeta.from_header(header, str(path))


def load_checkpoint(path: str | os.PathLike) -> tuple[CheckpointMeta, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    meta = read_meta(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorsError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint: {e}") from e
    return meta, {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}


def fingerprint(items: list[str]) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(item.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]
