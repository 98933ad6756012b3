"""A small MLP on top of a ridge map: the third kind of label-free gallery map.

h(x) = normalise(ridge(x) + W2 gelu(W1 (x - mean_in) + b1) + b2): the ridge map is fitted in
closed form first, then the two-layer correction is trained (numpy) on the cosine to the real
embedding (AdamW, at most STEPS steps, early-stopped on held-out pairs). Applying it is numpy (two matrix
products), so fitting, serving and the transform job need no torch. Out-of-fold predictions come from the
same folds as ridge, so `models.bridge.choose_map` compares the kinds on equal terms.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .transform import normalise

if TYPE_CHECKING:
    from .transform import RidgeFit

HIDDEN = 128
STEPS = 800  # at most: early stopping keeps the best state on held-out rows
CHECK_EVERY = 25
BATCH = 256
LR = 1e-3
WEIGHT_DECAY = 1e-2
MIN_PAIRS = 400  # below this a correction over-fits: `choose_map` skips the kind


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(0.7978845608 * (x + 0.044715 * (x * x * x))))


def correction(x: np.ndarray, mean_in: np.ndarray, w1: np.ndarray, b1: np.ndarray,
               w2: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """The MLP's additive correction of the ridge prediction (numpy)."""
    return gelu((np.asarray(x, np.float32) - mean_in) @ w1 + b1) @ w2 + b2


def _gelu_and_grad(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """gelu(x) (tanh form) and its derivative, sharing the tanh."""
    x2 = x * x
    t = np.tanh(0.7978845608 * (x + 0.044715 * (x2 * x)))
    grad = 0.5 * (1.0 + t) + (0.5 * 0.7978845608) * x * (1.0 - t * t) * (1.0 + 3 * 0.044715 * x2)
    return 0.5 * x * (1.0 + t), grad


def _unit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x / n, n


class _AdamW:
    """torch.optim.AdamW's update (betas 0.9/0.999, eps 1e-8, decoupled weight decay)."""

    def __init__(self, params: list[np.ndarray], lr: float, weight_decay: float):
        self.params, self.lr, self.wd, self.t = params, lr, weight_decay, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, grads: list[np.ndarray]) -> None:
        self.t += 1
        c1, c2 = 1 - 0.9 ** self.t, 1 - 0.999 ** self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            p *= 1 - self.lr * self.wd
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            p -= (self.lr / c1) * m / (np.sqrt(v / c2) + 1e-8)


def train_correction(x: np.ndarray, base: np.ndarray, y: np.ndarray, seed: int = 0,
                     steps: int = STEPS) -> tuple[np.ndarray, ...]:
    """(w1, b1, w2, b2) such that normalise(base + correction(x)) is close to y in cosine.
    `base` is the ridge prediction for x (unnormalised); x is centred inside. Early stopping: a
    seventh of the rows is held out and the state with its best cosine is kept (the zero
    correction, i.e. ridge itself, included), so the correction takes only what generalises.

    Trained in numpy with hand-written gradients (two small matrices: torch's per-step overhead
    was most of the time, and the fit needs no torch)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float32)
    xc = x - x.mean(0)
    bt = np.asarray(base, np.float32)
    yt = _unit(np.asarray(y, np.float32))[0]
    order = rng.permutation(len(xc))
    val, fit = order[: max(1, len(xc) // 7)], order[max(1, len(xc) // 7):]
    bound = 1 / np.sqrt(x.shape[1])  # torch.nn.Linear's default initialisation
    w1 = rng.uniform(-bound, bound, (x.shape[1], HIDDEN)).astype(np.float32)
    b1 = rng.uniform(-bound, bound, HIDDEN).astype(np.float32)
    w2 = np.zeros((HIDDEN, y.shape[1]), np.float32)  # starts as the ridge map exactly
    b2 = np.zeros(y.shape[1], np.float32)
    params = [w1, b1, w2, b2]
    opt = _AdamW(params, LR, WEIGHT_DECAY)

    def val_cosine() -> float:
        pred = _unit(bt[val] + gelu(xc[val] @ w1 + b1) @ w2 + b2)[0]
        return float((pred * yt[val]).sum(1).mean())

    best, best_state = val_cosine(), [p.copy() for p in params]
    for step in range(1, steps + 1):
        idx = fit[rng.integers(0, len(fit), min(BATCH, len(fit)))]
        xi = xc[idx]
        act, act_grad = _gelu_and_grad(xi @ w1 + b1)
        u, norm = _unit(bt[idx] + act @ w2 + b2)
        du = -yt[idx] / len(idx)  # d(1 - mean cosine)/du
        dp = (du - u * (u * du).sum(1, keepdims=True)) / norm
        dh = (dp @ w2.T) * act_grad
        opt.step([xi.T @ dh, dh.sum(0), act.T @ dp, dp.sum(0)])
        if step % CHECK_EVERY == 0 and (score := val_cosine()) > best:
            best, best_state = score, [p.copy() for p in params]
    return tuple(p.astype(np.float32) for p in best_state)


def mlp_oof(x: np.ndarray, y: np.ndarray, ridge: "RidgeFit", seed: int = 0) -> np.ndarray:
    """Out-of-fold predictions of ridge + correction: on the ridge cross-fit's own folds, each
    correction on top of that fold's ridge map (fitted once, in `ridge`)."""
    preds = np.zeros((len(x), y.shape[1]), np.float32)
    for fold in ridge.folds:
        tr, mean_in = fold[0], fold[1]
        te = ~tr
        w1, b1, w2, b2 = train_correction(x[tr], ridge.predict(fold, x[tr]), y[tr], seed=seed)
        preds[te] = ridge.predict(fold, x[te]) + correction(x[te], mean_in, w1, b1, w2, b2)
    return normalise(preds).astype(np.float32)
