"""Gallery transforms: maps from the vectors a gallery stores into a new model's own space.

After an upgrade, a model's queries can search the old vectors (compatibility), but the old
vectors cap what they find. FCT (apple/ml-fct) moves the gallery instead: a map h, learned from
pairs (old vector, new embedding) of the same photos, is applied to every stored vector. No
labels are needed and no photo is decoded. Two kinds:
  - `head`: the model is a head on the very backbone that computed the stored vectors, so
    applying the head to a stored vector *is* the model's embedding of that photo (exact);
  - `linear`: a map learned from the pairs: ridge regression (closed form, its strength chosen by
    cross-validation), orthogonal Procrustes, or ridge plus a small MLP's correction
    (models.mlp_map), with a per-vector estimate of how far off it is (its expected residual),
    so a later backfill can replace the worst first.
Applying a map is pure numpy (only fitting the MLP correction uses torch).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LAMBDAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
FOLDS = 5
AUX_PREFIX = "transform."  # tensor names inside a checkpoint (behind its aux. prefix)
MLP_TENSORS = ("mlp_w1", "mlp_b1", "mlp_w2", "mlp_b2")


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass
class LinearMap:
    """h(x) = normalise((x - mean_in) W + mean_out), and r(x) = x . u + c its expected residual
    (1 - cosine to the real embedding)."""
    weight: np.ndarray  # (d_in, d_out)
    mean_in: np.ndarray
    mean_out: np.ndarray
    residual_weight: np.ndarray  # (d_in,)
    residual_bias: float
    lam: float
    spec: dict = field(default_factory=dict)
    mlp: tuple[np.ndarray, ...] | None = None  # (w1, b1, w2, b2): kind "mlp"'s correction

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        out = (x - self.mean_in) @ self.weight + self.mean_out
        if self.mlp is not None:
            from .mlp_map import correction

            out = out + correction(x, self.mean_in, *self.mlp)
        return normalise(out).astype(np.float32)

    def uncertainty(self, x: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(x, np.float32) @ self.residual_weight + self.residual_bias, 0, 2)

    def tensors(self) -> dict[str, np.ndarray]:
        out = {f"{AUX_PREFIX}weight": self.weight, f"{AUX_PREFIX}mean_in": self.mean_in,
               f"{AUX_PREFIX}mean_out": self.mean_out,
               f"{AUX_PREFIX}residual_weight": self.residual_weight,
               f"{AUX_PREFIX}residual_bias": np.array([self.residual_bias], np.float32)}
        for name, t in zip(MLP_TENSORS, self.mlp or ()):
            out[AUX_PREFIX + name] = np.asarray(t, np.float32)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict, spec: dict) -> "LinearMap":
        def get(name):
            return np.asarray(tensors[AUX_PREFIX + name], np.float32)
        mlp = (tuple(get(name) for name in MLP_TENSORS)
               if AUX_PREFIX + MLP_TENSORS[0] in tensors else None)
        return cls(get("weight"), get("mean_in"), get("mean_out"), get("residual_weight"),
                   float(get("residual_bias")[0]), float(spec.get("lambda", 0.0)), spec, mlp)


def _ridge_factors(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """What every ridge strength's weights come from: (V^T, s, U^T y) of the SVD of x."""
    u, s, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
    return vt, s, u.T @ y.astype(np.float64)


def _ridge_weight(factors: tuple[np.ndarray, ...], lam: float) -> np.ndarray:
    vt, s, uty = factors
    return (vt.T * (s / (s * s + lam))) @ uty


def _ridge_solutions(x: np.ndarray, y: np.ndarray, lams) -> list[np.ndarray]:
    """Ridge weights for each lambda from one SVD of the (centred) inputs."""
    factors = _ridge_factors(x, y)
    return [_ridge_weight(factors, lam) for lam in lams]


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (normalise(a) * normalise(b)).sum(-1)


@dataclass
class RidgeFit:
    """A ridge cross-fit of y on x: the strength with the best out-of-fold cosine (`lam`), the
    out-of-fold predictions for it (`oof`, unit rows), each fold's map for it (`folds`: training
    rows, input mean, output mean, weights) and the map on every pair (`weight`). Fitted once
    per pair set: the ridge and the MLP kinds of map share it (`fit_linear_map(ridge=)`)."""
    lam: float
    oof: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    weight: np.ndarray  # (d_in, d_out) float32, fitted on every pair with `lam`
    seed: int  # of the folds

    @staticmethod
    def predict(fold: tuple, x: np.ndarray) -> np.ndarray:
        """A fold's ridge prediction (unnormalised, float32) for x."""
        _, mi, mo, w = fold
        return ((x - mi) @ w + mo).astype(np.float32)


def _cross_fit(x: np.ndarray, y: np.ndarray, lams, folds: int, seed: int, keep_folds: bool):
    """(best lambda, its out-of-fold predictions, each fold's map for it when `keep_folds`):
    one SVD per fold serves every lambda."""
    n = len(x)
    fold_of = np.random.default_rng(seed).permutation(n) % max(2, min(folds, n))
    preds = np.zeros((len(lams), n, y.shape[1]), np.float64)
    factors = []
    for f in np.unique(fold_of):
        tr, te = fold_of != f, fold_of == f
        mi, mo = x[tr].mean(0), y[tr].mean(0)
        svd = _ridge_factors(x[tr] - mi, y[tr] - mo)
        vt, s, uty = svd
        # the held-out rows in the SVD's basis once; each lambda then only rescales them (no
        # d_in x d_out weights per lambda: ~10x less arithmetic when a fold is smaller than d_in)
        basis = (x[te] - mi) @ vt.T
        for j, lam in enumerate(lams):
            preds[j, te] = (basis * (s / (s * s + lam))) @ uty + mo
        if keep_folds:
            factors.append((tr, mi, mo, svd))
    scores = [float(_cosine(p, y).mean()) for p in preds]
    best = int(np.argmax(scores))
    lam = float(lams[best])
    kept = [(tr, mi, mo, _ridge_weight(svd, lams[best])) for tr, mi, mo, svd in factors]
    return lam, normalise(preds[best]).astype(np.float32), kept


def cross_fitted(x: np.ndarray, y: np.ndarray, lams=LAMBDAS, folds: int = FOLDS, seed: int = 0
                 ) -> tuple[float, np.ndarray]:
    """(the lambda with the best out-of-fold cosine, the out-of-fold predictions for it): every
    pair is predicted by a map that never saw it, so measurements on them are honest."""
    lam, oof, _ = _cross_fit(x, y, lams, folds, seed, keep_folds=False)
    return lam, oof


def ridge_fit(old: np.ndarray, new: np.ndarray, seed: int = 0) -> RidgeFit:
    """The ridge cross-fit of `fit_linear_map`'s pairs (old as given, new normalised), with each
    fold's weights kept for a map built on top of ridge (the MLP kind)."""
    return _ridge_fit(*_pairs(old, new), seed)


def _ridge_fit(old: np.ndarray, new: np.ndarray, seed: int) -> RidgeFit:
    lam, oof, folds = _cross_fit(old, new, LAMBDAS, FOLDS, seed, keep_folds=True)
    mi, mo = old.mean(0), new.mean(0)
    weight = _ridge_solutions(old - mi, new - mo, [lam])[0].astype(np.float32)
    return RidgeFit(lam, oof, folds, weight, seed)


def procrustes_weight(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The (semi-)orthogonal W minimising |x W - y| for centred x, y: U V^T of svd(x^T y).
    With fewer pairs than dimensions, x^T y has rank n: its SVD comes from an n-row matrix
    (like ridge, the map then acts on the span of the pairs only)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    if len(x) >= x.shape[1]:
        u, _, vt = np.linalg.svd(x.T @ y, full_matrices=False)
        return u @ vt
    q, r = np.linalg.qr(x.T)  # x^T = q r: x^T y = q (r y)
    u, _, vt = np.linalg.svd(r @ y, full_matrices=False)
    return (q @ u) @ vt


def procrustes_oof(x: np.ndarray, y: np.ndarray, folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """Out-of-fold predictions of an orthogonal Procrustes map (no strength to choose)."""
    n = len(x)
    fold_of = np.random.default_rng(seed).permutation(n) % max(2, min(folds, n))
    preds = np.zeros((n, y.shape[1]), np.float64)
    for f in np.unique(fold_of):
        tr, te = fold_of != f, fold_of == f
        mi, mo = x[tr].mean(0), y[tr].mean(0)
        preds[te] = (x[te] - mi) @ procrustes_weight(x[tr] - mi, y[tr] - mo) + mo
    return normalise(preds).astype(np.float32)


MAP_KINDS = ("ridge", "procrustes", "mlp")
LINEAR_KINDS = ("ridge", "procrustes")  # a query map becomes a linear head: no mlp there


def _pairs(old: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(old, np.float32), normalise(np.asarray(new, np.float32))


def fit_linear_map(old: np.ndarray, new: np.ndarray, seed: int = 0, kind: str = "ridge",
                   ridge: RidgeFit | None = None) -> tuple[LinearMap, np.ndarray]:
    """Learn h: stored vector -> the model's embedding from pairs of the same photos, by ridge
    regression, orthogonal Procrustes or ridge plus a small MLP's correction (`kind`, see
    models.mlp_map). Returns the map (fitted on every pair) and its
    out-of-fold predictions (for honest measurement). `ridge`: these pairs' `ridge_fit` (same
    seed), when already made (the ridge and MLP kinds both start from it)."""
    old, new = _pairs(old, new)
    if len(old) < 2 * FOLDS:
        raise ValueError(f"a gallery transform needs at least {2 * FOLDS} photo pairs, got {len(old)}")
    if kind not in MAP_KINDS:
        raise ValueError(f"unknown map kind {kind!r}; choose from {', '.join(MAP_KINDS)}")
    mi, mo = old.mean(0), new.mean(0)
    mlp = None
    if kind in ("ridge", "mlp"):
        if ridge is None:
            ridge = _ridge_fit(old, new, seed)
        elif len(ridge.oof) != len(old) or ridge.seed != seed:
            raise ValueError("the ridge fit passed is of other pairs or folds")
        lam, oof, w = ridge.lam, ridge.oof, ridge.weight
        if kind == "mlp":
            from .mlp_map import mlp_oof, train_correction

            oof = mlp_oof(old, new, ridge, seed=seed)
            mlp = train_correction(old, (old - mi) @ w + mo, new, seed=seed)
    else:
        lam, oof = 0.0, procrustes_oof(old, new, seed=seed)
        w = procrustes_weight(old - mi, new - mo).astype(np.float32)
    # the expected residual of a vector, learned from the out-of-fold residuals (FastFill-style:
    # a backfill replaces the vectors the map got most wrong first)
    residual = 1.0 - _cosine(oof, new)
    rm = residual.mean()
    r_lam, _ = cross_fitted(old, (residual - rm)[:, None], seed=seed + 1)
    ri = old.mean(0)
    rw = _ridge_solutions(old - ri, (residual - rm)[:, None], [r_lam])[0][:, 0]
    rb = float(rm - ri @ rw)
    spec = {"kind": "linear", "map": kind, "lambda": lam, "in_dim": int(old.shape[1]), "out_dim": int(new.shape[1]),
            "pairs": int(len(old)), "oof_cosine": round(float(1 - residual.mean()), 4),
            "exact": False}
    return LinearMap(w, mi.astype(np.float32), mo.astype(np.float32), rw.astype(np.float32), rb,
                     lam, spec, mlp), oof


@dataclass
class GalleryTransform:
    """What `upgrade --transform` applies to stored vectors: `apply(vectors) -> vectors` in the
    model's space, `uncertainty(vectors)` (a learned map's expected residual; None when exact)."""
    spec: dict
    apply: object
    uncertainty: object | None

    @property
    def exact(self) -> bool:
        return self.spec.get("kind") == "head"

    @property
    def origin(self) -> str:
        """What the catalog records for the vectors it makes."""
        return "head" if self.exact else "map"

    def input_models(self) -> set[str]:
        """The models whose stored vectors it maps as they were meant to be (others only
        approximately)."""
        return set(self.spec.get("input_models", []))
