"""A small MLP on top of a ridge map: the third kind of label-free gallery map.

h(x) = normalise(ridge(x) + W2 gelu(W1 (x - mean_in) + b1) + b2): the ridge map is fitted in
closed form first, then the two-layer correction is trained with torch on the cosine to the real
embedding (AdamW, at most STEPS steps, early-stopped on held-out pairs). Applying it is numpy (two matrix
products), so serving and the transform job need no torch. Out-of-fold predictions come from the
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
    return 0.5 * x * (1.0 + np.tanh(0.7978845608 * (x + 0.044715 * x ** 3)))


def correction(x: np.ndarray, mean_in: np.ndarray, w1: np.ndarray, b1: np.ndarray,
               w2: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """The MLP's additive correction of the ridge prediction (numpy)."""
    return gelu((np.asarray(x, np.float32) - mean_in) @ w1 + b1) @ w2 + b2


def train_correction(x: np.ndarray, base: np.ndarray, y: np.ndarray, seed: int = 0,
                     steps: int = STEPS) -> tuple[np.ndarray, ...]:
    """(w1, b1, w2, b2) such that normalise(base + correction(x)) is close to y in cosine.
    `base` is the ridge prediction for x (unnormalised); x is centred inside. Early stopping: a
    seventh of the rows is held out and the state with its best cosine is kept (the zero
    correction, i.e. ridge itself, included), so the correction takes only what generalises."""
    import torch

    torch.manual_seed(seed)
    mean_in = x.mean(0)
    xt = torch.as_tensor(x - mean_in, dtype=torch.float32)
    bt = torch.as_tensor(base, dtype=torch.float32)
    yt = torch.nn.functional.normalize(torch.as_tensor(y, dtype=torch.float32), dim=1)
    order = torch.randperm(len(xt), generator=torch.Generator().manual_seed(seed))
    val, fit = order[: max(1, len(xt) // 7)], order[max(1, len(xt) // 7):]
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], HIDDEN), torch.nn.GELU(approximate="tanh"),
                              torch.nn.Linear(HIDDEN, y.shape[1]))
    torch.nn.init.zeros_(net[2].weight)  # starts as the ridge map exactly
    torch.nn.init.zeros_(net[2].bias)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    gen = torch.Generator().manual_seed(seed)

    def val_cosine() -> float:
        with torch.no_grad():
            pred = torch.nn.functional.normalize(bt[val] + net(xt[val]), dim=1)
            return float((pred * yt[val]).sum(1).mean())

    best, best_state = val_cosine(), {k: v.clone() for k, v in net.state_dict().items()}
    for step in range(1, steps + 1):
        idx = fit[torch.randint(0, len(fit), (min(BATCH, len(fit)),), generator=gen)]
        pred = torch.nn.functional.normalize(bt[idx] + net(xt[idx]), dim=1)
        loss = 1.0 - (pred * yt[idx]).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % CHECK_EVERY == 0 and (score := val_cosine()) > best:
            best, best_state = score, {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    with torch.no_grad():
        return (net[0].weight.T.numpy().copy(), net[0].bias.numpy().copy(),
                net[2].weight.T.numpy().copy(), net[2].bias.numpy().copy())


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
