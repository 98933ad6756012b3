"""How vectors are stored in the catalog: float16 blobs (schema v3), read back as float32."""
from __future__ import annotations

import sqlite3

import numpy as np

# Vectors are stored as float16 (schema v3): half the bytes of float32, and for L2-normalised
# embeddings a cosine error around 1e-7, far below what any retrieval figure can see.
STORED_DTYPE = np.float16


def encode_vectors(vectors: np.ndarray) -> list[bytes]:
    return [v.tobytes() for v in np.ascontiguousarray(vectors, dtype=np.float32).astype(STORED_DTYPE)]


def decode_vectors(blobs: list[bytes], dim: int) -> np.ndarray:
    """(n, dim) float32 from stored blobs: float16 (v3), or float32 written before v3."""
    joined = b"".join(blobs)
    if len(joined) == len(blobs) * dim * 2:
        return np.frombuffer(joined, dtype=np.float16).reshape(len(blobs), dim).astype(np.float32)
    if len(joined) == len(blobs) * dim * 4:
        return np.frombuffer(joined, dtype=np.float32).reshape(len(blobs), dim)
    if not blobs:
        return np.zeros((0, dim), np.float32)
    if len(blobs) == 1:
        raise sqlite3.DatabaseError(f"a stored vector is damaged ({len(joined)} bytes for "
                                    f"{dim} dimensions)")
    return np.stack([decode_vectors([b], dim)[0] for b in blobs])  # float16 and float32 mixed


def as_stored(vectors: np.ndarray) -> np.ndarray:
    """What these vectors read back as from the catalog (live indexes hold exactly that)."""
    return np.asarray(vectors, dtype=np.float32).astype(STORED_DTYPE).astype(np.float32)
