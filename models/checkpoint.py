"""Graceful checkpoints: one small safetensors file per trained head, metadata inside.

Loading never executes pickled code (safetensors holds only tensors and a str->str header).
The header says which backbone the head sits on, which space its vectors live in, which model
it was made compatible with, how it was trained and what it measured.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, TypeGuard

import numpy as np
from safetensors import SafetensorError as SafetensorsError

FORMAT = "graceful-checkpoint/1"
SUFFIX = ".safetensors"

# A model's name becomes a file name in the gallery's models/: letters, digits, _ . - (max 64),
# never "..". The header's name is checked against this before anything is written.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# Memory bounds, checked from the header before any tensor is read.
MAX_HEADER_BYTES = 1 << 20  # the safetensors JSON header
MAX_CHECKPOINT_BYTES = 1 << 30  # all tensors together (a fine-tuned backbone tail is ~50 MB)
MAX_HEAD_PARAMS = 64_000_000  # floats in the head its spec describes
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, of another format, or mismatching."""


def is_base_model(name: str) -> bool:
    """A model that is not a checkpoint: the backbone a head may sit on."""
    from .variants import LITE_VARIANTS

    return name in LITE_VARIANTS or (name.startswith("openclip:") and len(name.split(":", 2)) == 3)


def valid_name(name) -> bool:
    return isinstance(name, str) and bool(NAME_RE.fullmatch(name)) and ".." not in name


def _int(value, positive: bool = True) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and (value > 0 or not positive)


# Head types a checkpoint may declare (models/heads.py builds them): their optional keys and
# the tensors (name -> shape) a spec implies.
HEAD_KEYS = {"linear": {"bias"}, "mlp": {"hidden", "negative_slope", "dropout"},
             "blend": {"hidden", "alpha", "negative_slope", "dropout"}}


def head_shapes(spec) -> dict[str, tuple[int, ...]]:
    """The tensors a head spec implies, or CheckpointError (a one-line reason) for a spec that
    is not a dict of a known type with positive int dimensions, or that is too large."""
    if not isinstance(spec, dict):
        raise CheckpointError(f"head spec is {type(spec).__name__}, not an object")
    kind = spec.get("type")
    if kind not in HEAD_KEYS:
        raise CheckpointError(f"unknown head type {kind!r}; known: {sorted(HEAD_KEYS)}")
    extra = set(spec) - {"type", "in_dim", "out_dim"} - HEAD_KEYS[kind]
    if extra:
        raise CheckpointError(f"head spec has unknown keys {sorted(extra)}")
    i, o = spec.get("in_dim"), spec.get("out_dim")
    if not (_int(i) and _int(o)):
        raise CheckpointError(f"head dimensions must be positive integers (in_dim={i!r}, out_dim={o!r})")
    if kind == "linear":
        bias = spec.get("bias", True)
        if not isinstance(bias, bool):
            raise CheckpointError(f"head bias must be true or false, not {bias!r}")
        shapes = {"proj.weight": (o, i), **({"proj.bias": (o,)} if bias else {})}
    else:
        h = spec.get("hidden", 1024)
        slope, drop = spec.get("negative_slope", 0.0), spec.get("dropout", 0.0)
        if not _int(h):
            raise CheckpointError(f"head hidden size must be a positive integer, not {h!r}")
        if kind == "blend":
            alpha = spec.get("alpha", 0.5)
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
                raise CheckpointError(f"head alpha {alpha!r} is out of range")
            if i != o:
                raise CheckpointError(f"a blend head maps a space onto itself (in_dim {i} != out_dim {o})")
        for key, v, hi in (("negative_slope", slope, math.inf), ("dropout", drop, 1.0)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < hi:
                raise CheckpointError(f"head {key} {v!r} is out of range")
        shapes = {"net.0.weight": (h, i), "net.0.bias": (h,), "net.3.weight": (o, h),
                  "net.3.bias": (o,)}
    params = sum(math.prod(s) for s in shapes.values())
    if params > MAX_HEAD_PARAMS:
        raise CheckpointError(f"head spec describes {params:,} parameters "
                              f"(more than {MAX_HEAD_PARAMS:,}): refused")
    return shapes


def read_header(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, ...]]]]:
    """A safetensors file's metadata and tensor table (name -> dtype, shape), read with a
    memory bound: a regular file of at most MAX_CHECKPOINT_BYTES, a header of at most
    MAX_HEADER_BYTES, and every tensor's declared size matching its byte range inside the file.
    Nothing past the header is read."""
    from .fsutil import FileRefused

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise CheckpointError(f"{path}: unreadable checkpoint: {e.strerror or e}") from None
    try:
        from .fsutil import checked_size

        size = checked_size(fd, MAX_CHECKPOINT_BYTES + MAX_HEADER_BYTES + 8)
        with os.fdopen(fd, "rb", closefd=False) as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise CheckpointError(f"{path}: damaged checkpoint: header of {n} bytes "
                                      f"in a file of {size}")
            raw = f.read(n)
        return parse_header(raw, size - 8 - n, str(path))
    except FileRefused as e:
        raise CheckpointError(f"{path}: unreadable checkpoint: {e}") from None
    except OSError as e:
        raise CheckpointError(f"{path}: unreadable checkpoint: {e.strerror or e}") from None
    finally:
        os.close(fd)


def parse_header(raw: bytes, data_size: int, source: str
                 ) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, ...]]]]:
    try:
        table = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{source}: damaged checkpoint header: {e}") from None
    if not isinstance(table, dict):
        raise CheckpointError(f"{source}: damaged checkpoint header (not an object)")
    meta = table.pop("__metadata__", None) or {}
    if not (isinstance(meta, dict) and all(isinstance(k, str) and isinstance(v, str)
                                           for k, v in meta.items())):
        raise CheckpointError(f"{source}: damaged checkpoint header (metadata is not str -> str)")
    tensors, total = {}, 0
    for key, t in table.items():
        ok = (isinstance(t, dict) and t.get("dtype") in DTYPE_BYTES
              and isinstance(t.get("shape"), list) and all(_int(d, False) for d in t["shape"])
              and isinstance(t.get("data_offsets"), list) and len(t["data_offsets"]) == 2
              and all(_int(d, False) for d in t["data_offsets"]))
        if not ok:
            raise CheckpointError(f"{source}: damaged checkpoint: tensor {key!r} is not described "
                                  "by a dtype, a shape and two offsets")
        begin, end = t["data_offsets"]
        nbytes = math.prod(t["shape"]) * DTYPE_BYTES[t["dtype"]]
        if not begin <= end <= data_size or end - begin != nbytes:
            raise CheckpointError(f"{source}: damaged checkpoint: tensor {key!r} declares "
                                  f"{nbytes} bytes at [{begin}, {end}) of {data_size}")
        total += nbytes
        tensors[key] = (t["dtype"], tuple(t["shape"]))
    if total > min(data_size, MAX_CHECKPOINT_BYTES):
        raise CheckpointError(f"{source}: damaged checkpoint: tensors declare {total} bytes, "
                              f"the file holds {data_size}")
    return meta, tensors


def check_tensors(meta: "CheckpointMeta", tensors: dict[str, tuple[str, tuple[int, ...]]],
                  source: str) -> None:
    """The tensors in the file are the ones the head spec implies (names, shapes, float), and a
    stored classifier has one row per class in the checkpoint's dimension."""
    expected = head_shapes(meta.head)
    head = {k: v for k, v in tensors.items() if not k.startswith(AUX)}
    if set(head) != set(expected):
        raise CheckpointError(f"{source}: the tensors {sorted(head)} do not match its "
                              f"{meta.head['type']} head (expects {sorted(expected)})")
    for key, (dtype, shape) in head.items():
        if shape != expected[key] or dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"{source}: tensor {key!r} is {dtype} {list(shape)}; its head "
                                  f"spec needs a float {list(expected[key])}")
    if meta.head["out_dim"] != meta.dim:
        raise CheckpointError(f"{source}: head output ({meta.head['out_dim']}-d) is not its "
                              f"declared dimension ({meta.dim})")
    transform = meta.transform or {}
    if transform.get("kind") == "linear":
        i, o = transform.get("in_dim"), transform.get("out_dim")
        want = {"transform.weight": (i, o), "transform.mean_in": (i,), "transform.mean_out": (o,),
                "transform.residual_weight": (i,), "transform.residual_bias": (1,)}
        for key, need in want.items():
            got = tensors.get(AUX + key)
            if got is None or got[1] != need or got[0] not in FLOAT_DTYPES:
                raise CheckpointError(f"{source}: its gallery transform needs a float {list(need)} "
                                      f"tensor {key!r}, found {got}")
        if o != meta.dim:
            raise CheckpointError(f"{source}: its gallery transform outputs {o}-d, not {meta.dim}-d")
    cls = tensors.get(AUX + "classifier")
    if cls is not None:
        rows = len(meta.classes) if meta.classes else cls[1][0] if cls[1] else 0
        if cls[0] not in FLOAT_DTYPES or cls[1] != (rows, meta.dim):
            raise CheckpointError(f"{source}: stored classifier is {cls[0]} {list(cls[1])}, "
                                  f"expected a float [{rows}, {meta.dim}]")


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
    # How the gallery's stored vectors move into this model's space (`upgrade --transform`):
    # {"kind": "head"} (exact: its head on the stored vectors of its backbone) or {"kind":
    # "linear", ...} (a learned map, tensors aux.transform.*); empty: no transform.
    transform: dict = field(default_factory=dict)

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
            meta = cls(**values)
        except (TypeError, ValueError, RecursionError) as e:
            raise CheckpointError(f"{source}: damaged checkpoint header: {e}") from None
        problem = meta.problem()
        if problem:
            raise CheckpointError(f"{source}: damaged checkpoint header: {problem}")
        return meta

    def problem(self) -> str | None:
        """What is wrong with the header's values (types, ranges, the name), or None."""
        def strs(v):
            return isinstance(v, list) and all(isinstance(x, str) for x in v)

        if not valid_name(self.name):
            return (f"model name {self.name!r} is not a plain name (letters, digits, '_', '.', "
                    f"'-', at most 64, no '..')")
        for key in ("backbone", "space", "method", "data_fingerprint", "notes"):
            if not isinstance(getattr(self, key), str):
                return f"{key} is {type(getattr(self, key)).__name__}, not a string"
        if not (self.backbone and self.space and self.method):
            return "backbone, space and method must not be empty"
        if not is_base_model(self.backbone):
            # loading a head loads its backbone first: one naming a checkpoint (itself, say)
            # would recurse without bound
            return (f"backbone {self.backbone!r} is not a base model (lite0, lite1, lite2 or "
                    f"openclip:ARCH:TAG): a head sits on a base model, never on another checkpoint")
        if not _int(self.dim):
            return f"dim {self.dim!r} is not a positive integer"
        if self.old_model is not None and not isinstance(self.old_model, str):
            return f"old_model is {type(self.old_model).__name__}, not a string"
        for key in ("compatible_with", "classes"):
            if not strs(getattr(self, key)):
                return f"{key} is not a list of strings"
        for key in ("metrics", "training", "transform"):
            if not isinstance(getattr(self, key), dict):
                return f"{key} is {type(getattr(self, key)).__name__}, not an object"
        if isinstance(self.created_at, bool) or not isinstance(self.created_at, (int, float)):
            return "created_at is not a number"
        kind = self.transform.get("kind")
        if kind not in (None, "head", "linear"):
            return f"unknown gallery transform {kind!r}"
        if kind == "linear" and not (_int(self.transform.get("in_dim"))
                                     and _int(self.transform.get("out_dim"))):
            return "gallery transform dimensions must be positive integers"
        try:
            head_shapes(self.head)
        except CheckpointError as e:
            return str(e)
        return None


AUX = "aux."  # tensors that are not part of the head (e.g. aux.classifier)


def save_checkpoint(path: str | os.PathLike, meta: CheckpointMeta, head: "Weights",
                    half: bool = True, aux: "Weights | None" = None) -> Path:
    """Atomic write: a crash leaves either no file or a complete one. `head` and `aux`: names to
    arrays or tensors (or a torch module, its state_dict); floats are stored as float16 when
    `half`. Needs no torch when given arrays."""
    from safetensors.numpy import save

    from .fsutil import atomic_write_bytes, remove_stale_temp_files

    path = Path(path)
    remove_stale_temp_files(path.parent)  # left by a save that was killed before its rename
    state = {**_arrays(head), **{AUX + k: v for k, v in _arrays(aux or {}).items()}}
    tensors = {k: np.ascontiguousarray(v.astype(np.float16) if half and v.dtype.kind == "f" else v)
               for k, v in state.items()}
    atomic_write_bytes(path, save(tensors, metadata=meta.to_header()))
    os.chmod(path, 0o644)
    return path


Weights = Mapping[str, Any]


def _arrays(weights) -> dict[str, np.ndarray]:
    """Names to numpy arrays, from arrays, tensors or a module's state_dict."""
    if hasattr(weights, "state_dict"):
        weights = weights.state_dict()
    out = {}
    for k, v in weights.items():
        if hasattr(v, "detach"):  # a torch tensor (bfloat16 has no numpy type)
            v = v.detach().cpu()
            v = (v.float() if v.is_floating_point() else v).numpy()
        out[k] = np.asarray(v)
    return out


def read_meta(path: str | os.PathLike) -> CheckpointMeta:
    """The checkpoint's header, fully validated (types, name, head spec, tensor shapes and
    byte ranges against the file) from the header alone: no torch, no tensor read."""
    header, tensors = read_header(path)
    meta = CheckpointMeta.from_header(header, str(path))
    check_tensors(meta, tensors, str(path))
    return meta


def validate_bytes(data: bytes, source: str) -> CheckpointMeta:
    """Like read_meta, for a checkpoint held in memory (what is about to be written)."""
    if len(data) < 8:
        raise CheckpointError(f"{source}: not a safetensors file ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise CheckpointError(f"{source}: damaged checkpoint: header of {n} bytes in a file of "
                              f"{len(data)}")
    header, tensors = parse_header(data[8:8 + n], len(data) - 8 - n, source)
    meta = CheckpointMeta.from_header(header, source)
    check_tensors(meta, tensors, source)
    return meta


def load_checkpoint(path: str | os.PathLike) -> tuple[CheckpointMeta, dict[str, np.ndarray]]:
    """The header (validated) and every tensor, floats as float32 arrays; no torch."""
    from safetensors import safe_open

    meta = read_meta(path)  # bounds what is read below
    try:
        with safe_open(str(path), framework="numpy") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorsError, OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint: {e}") from e
    return meta, {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in tensors.items()}


def fingerprint(items: list[str]) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(item.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]
