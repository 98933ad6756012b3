"""Label-free bridges between two models' spaces, and searching both generations together.

A bridge is learned from paired vectors alone (the stored vector of a photo and a new model's
embedding of the same photo): a gallery map (stored vector -> the new space) and a query map
(new query -> the stored space), each ridge regression or orthogonal Procrustes (the gallery
map also ridge plus a small MLP, models.mlp_map, from 400 pairs on), chosen by cross-validated
neighbour fidelity. No labels are needed.

Fused search scores a photo by w * cos(old query, old vector) + (1 - w) * cos(new query, new
vector). With unit vectors that is one inner product of concatenations,
[sqrt(w) old, sqrt(1 - w) new], so any exact index (FAISS, Milvus) serves it unchanged, and the
concatenation is a unit vector again. The new half of a photo not yet embedded by the new model
is the gallery map's estimate of it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .evaluation.score import overlap, top_k
from .transform import LINEAR_KINDS, MAP_KINDS, LinearMap, fit_linear_map, normalise, ridge_fit

FIDELITY_K = 10
FUSED_PREFIX = "fused:"
BLEND_PREFIX = "blend:"


def self_excluded(n: int) -> np.ndarray:
    return np.eye(n, dtype=bool)


def map_fidelity(queries: np.ndarray, real: np.ndarray, mapped: np.ndarray, k: int = FIDELITY_K
                 ) -> float:
    """Label-free: the share of each query's first k results among the real vectors that it
    also finds among the mapped ones (rows pair up; each query's own row left out)."""
    excluded = self_excluded(len(real))
    return float(overlap(top_k(queries, mapped, k, excluded), top_k(queries, real, k, excluded)).mean())


@dataclass
class MapChoice:
    """A fitted map, its out-of-fold predictions and how each kind scored."""
    map: LinearMap
    oof: np.ndarray
    kind: str
    scores: dict


def query_fidelity(real_q: np.ndarray, mapped_q: np.ndarray, gallery: np.ndarray,
                   k: int = FIDELITY_K) -> float:
    """Label-free: the share of each real query's first k results (among `gallery`, its own row
    left out) that the mapped query finds too."""
    excluded = self_excluded(len(gallery))
    return float(overlap(top_k(mapped_q, gallery, k, excluded), top_k(real_q, gallery, k, excluded)).mean())


def choose_map(x: np.ndarray, y: np.ndarray, side: str = "gallery",
               kinds: tuple[str, ...] | None = None, seed: int = 0) -> MapChoice:
    """Fit x -> y by each kind and keep the one whose out-of-fold predictions keep the most
    first results: as a gallery (`side="gallery"`: y's rows searched by y's rows) or as
    queries (`side="query"`: mapped rows searching y's rows in place of y's own; linear kinds
    only, as the query map becomes a linear head). By default the MLP kind is tried from
    `mlp_map.MIN_PAIRS` pairs on (fewer over-fit its correction)."""
    from .mlp_map import MIN_PAIRS

    if kinds is None:
        kinds = MAP_KINDS if side == "gallery" and len(x) >= MIN_PAIRS else LINEAR_KINDS
    real = normalise(np.asarray(y, np.float32))
    best: MapChoice | None = None
    scores = {}
    # the ridge cross-fit, made once: the ridge kind is it, the MLP kind corrects each fold's map
    ridge = ridge_fit(x, y, seed=seed) if {"ridge", "mlp"} & set(kinds) else None
    for kind in kinds:
        m, oof = fit_linear_map(x, y, seed=seed, kind=kind, ridge=ridge)
        fid = (map_fidelity(real, real, oof) if side == "gallery"
               else query_fidelity(real, oof, real))
        scores[kind] = {"fidelity": round(fid, 4),
                        "oof_cosine": m.spec["oof_cosine"]}
        if best is None or scores[kind]["fidelity"] > scores[best.kind]["fidelity"]:
            best = MapChoice(m, oof, kind, scores)
    assert best is not None
    best.map.spec["chosen_by"] = {"rule": f"out-of-fold top-{FIDELITY_K} neighbour fidelity",
                                  "scores": scores}
    return best


def fuse(old: np.ndarray, new: np.ndarray, weight: float) -> np.ndarray:
    """[sqrt(w) old, sqrt(1 - w) new]: the inner product of two such rows is the weighted sum of
    the two cosines (w on the old space)."""
    return np.concatenate([np.sqrt(weight) * np.asarray(old, np.float32),
                           np.sqrt(1.0 - weight) * np.asarray(new, np.float32)], axis=1
                          ).astype(np.float32)


def split(fused: np.ndarray, old_dim: int, weight: float) -> tuple[np.ndarray, np.ndarray]:
    """The two unit halves of fused vectors (inverse of `fuse`)."""
    return (normalise(fused[:, :old_dim]).astype(np.float32),
            normalise(fused[:, old_dim:]).astype(np.float32))


# -- fused model names ------------------------------------------------------------------------
def fused_name(old: str, bridge: str, weight: float) -> str:
    """`fused:OLD+BRIDGE@W`: the old query model, the bridge whose backbone is the new model
    and whose gallery map fills the new halves, and the old space's weight."""
    return f"{FUSED_PREFIX}{old}+{bridge}@{weight:.2f}"


def parse_fused(name: str) -> tuple[str, str, float]:
    """(old, bridge or head, weight) of a fused (`fused:`) or blended (`blend:`) name;
    ValueError when it is not one."""
    prefix = BLEND_PREFIX if name.startswith(BLEND_PREFIX) else FUSED_PREFIX
    if not name.startswith(prefix) or "@" not in name or "+" not in name:
        raise ValueError(f"fused models are named {prefix}OLD+MODEL@WEIGHT, got {name!r}")
    body, weight = name[len(prefix):].rsplit("@", 1)
    old, bridge = body.split("+", 1)
    w = float(weight)
    if not (0.0 < w < 1.0) or not old or not bridge:
        raise ValueError(f"fused model {name!r}: the weight must be between 0 and 1")
    return old, bridge, w
