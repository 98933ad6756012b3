"""Metrics and losses against hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models import losses, metrics
from models.train import procrustes, slerp


def unit(*rows):
    a = np.array(rows, dtype=np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_rank_matrix_excludes_self_and_orders_by_similarity():
    x = unit([1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9])
    order = metrics.rank_matrix(x, x)
    assert order.shape == (4, 3)
    assert order[0].tolist() == [1, 3, 2]
    assert all(i not in row for i, row in enumerate(order))


def test_top1_top5_and_map_by_hand():
    # labels: A A B B ; query 0's neighbours by similarity: 2 (B), 1 (A), 3 (B)
    x = unit([1, 0], [0.5, 0.5], [0.95, 0.05], [0, 1])
    labels = np.array([0, 0, 1, 1])
    r = metrics.evaluate(x, x, labels)
    order = metrics.rank_matrix(x, x)
    assert order[0].tolist() == [2, 1, 3]
    # query 0: first relevant at rank 2 -> AP = 1/2
    ap = metrics.average_precision(labels[order] == labels[:, None])
    assert ap[0] == pytest.approx(0.5)
    assert r.map == pytest.approx(ap.mean())
    assert r.correct_top1.tolist() == [labels[order[i, 0]] == labels[i] for i in range(4)]
    assert r.top5 == 1.0  # everything is within 3 results


def test_average_precision_hand_case():
    rel = np.array([[True, False, True, False], [False, False, False, True], [False] * 4])
    ap = metrics.average_precision(rel)
    assert ap[0] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert ap[1] == pytest.approx(1 / 4)
    assert ap[2] == 0


def test_flip_rates_by_hand():
    old = np.array([1, 1, 1, 0, 0, 1], bool)
    new = np.array([1, 0, 1, 1, 0, 0], bool)
    f = metrics.flip_rates(old, new)
    assert f == {"nfr": round(2 / 6, 4), "pfr": round(1 / 6, 4), "queries": 6}
    mask = np.array([1, 1, 0, 0, 0, 0], bool)
    assert metrics.flip_rates(old, new, mask)["nfr"] == 0.5


def test_cosine_logits_and_influence_loss():
    emb = torch.tensor([[2.0, 0.0]])
    w = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    logits = losses.cosine_logits(emb, w, scale=10)
    assert torch.allclose(logits, torch.tensor([[10.0, 0.0]]))
    loss = losses.influence_loss(emb, w, torch.tensor([0]), scale=10)
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-10)), rel=1e-3)


def test_focal_distillation_weights_old_right_samples():
    old_logits = torch.tensor([[5.0, 0.0], [5.0, 0.0]])
    new_logits = torch.tensor([[0.0, 5.0], [0.0, 5.0]])
    labels_right = torch.tensor([0, 0])  # old right on both
    labels_wrong = torch.tensor([1, 1])  # old wrong on both
    right = losses.focal_distillation(new_logits, old_logits, labels_right, alpha=1, beta=5)
    wrong = losses.focal_distillation(new_logits, old_logits, labels_wrong, alpha=1, beta=5)
    assert float(right) == pytest.approx(6 * float(wrong))
    same = losses.focal_distillation(old_logits, old_logits, labels_right)
    assert float(same) == pytest.approx(0, abs=1e-6)


def test_class_mean_classifier():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    w = losses.class_mean_classifier(emb, torch.tensor([0, 0, 1]), 3)
    assert torch.allclose(w[0], torch.tensor([1, 1]) / math.sqrt(2))
    assert torch.allclose(w[1], torch.tensor([0.0, 1.0]))
    assert torch.allclose(w[2], torch.zeros(2))  # a class with no images stays empty


def test_procrustes_recovers_a_rotation():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 8)).astype(np.float32)
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    y = x @ q.astype(np.float32)
    head = procrustes(x, y)
    with torch.no_grad():
        assert np.allclose(head(torch.from_numpy(x)).numpy(), y, atol=1e-4)


def test_slerp_endpoints_and_midpoint():
    a, b = unit([1, 0]), unit([0, 1])
    assert np.allclose(slerp(a, b, 0), a) and np.allclose(slerp(a, b, 1), b)
    assert np.allclose(slerp(a, b, 0.5), unit([1, 1]), atol=1e-6)


def test_least_squares_loss_by_hand():
    cos = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    loss = losses.least_squares(cos, torch.tensor([0, 1]))
    assert float(loss) == pytest.approx((0 + (0.25 + 0.25)) / 2)
