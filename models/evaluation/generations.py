"""Many generations and many devices (`graceful bench chain`, `graceful bench hetero`,
`python -m bench.generations chain|hetero`; the app's Models page).

chain:  v1 (lite0, first third of the classes) -> v2 (lite1, two thirds, BCT to v1) -> v3
        (lite2, all classes, BCT to v2, so transitively in v1's space), plus v3-direct (BCT
        straight to v1) and independently trained v2/v3. Reports the compatibility matrix (query
        model x gallery model) and the compatibility tax (independent minus compatible, on
        each model's own gallery).
hetero: a large "cloud" gallery model (lite2) and small query models (lite0, lite1) trained
        compatible with it: accuracy of small-query/large-gallery retrieval vs images/s.
All on frozen cached features; training on the train split, evaluation on the test split.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models import metrics, registry
from models.features import FeatureCache, extract, file_shas
from models.imagefolder import align_classes, scan
from models.train import TrainConfig, TrainedHead, old_classifier_rows, train_head

MIN_TIMED_IMAGES = 8  # fewer freshly embedded test photos than this: speed from a probe


@dataclass
class GenConfig:
    train_dir: Path
    test_dir: Path
    cache_dir: Path
    dim: int = 256
    epochs: int = 30
    loss: str = "ce"
    progress: bool = True


def _data(cfg: GenConfig, backbones: list[str]):
    """(train, test, features per backbone, images/s per backbone). The speed is that of the
    test split's extraction (decode + embed, as a query costs) when it embedded enough photos,
    else a probe (the features were cached)."""
    train = scan(cfg.train_dir)
    test = align_classes(scan(cfg.test_dir), train.classes)
    feats, speed = {}, {}
    for b in backbones:
        model = registry.load(b)
        train_feats = extract(model, train.files, cfg.cache_dir, progress=cfg.progress)
        shas = file_shas(test.files)  # the test split second: the model is warm when timed
        fresh = len(FeatureCache(cfg.cache_dir, model.name).missing(shas))
        t = time.perf_counter()
        test_feats = extract(model, test.files, cfg.cache_dir, progress=cfg.progress, shas=shas)
        seconds = time.perf_counter() - t
        speed[b] = round(fresh / seconds, 2) if fresh >= MIN_TIMED_IMAGES else throughput(b)
        feats[b] = (train_feats, test_feats)
    return train, test, feats, speed


def _train(cfg: GenConfig, method: str, x, y, n, **kw) -> TrainedHead:
    return train_head(TrainConfig(method, dim=cfg.dim, epochs=cfg.epochs, loss=cfg.loss), x, y, n,
                      progress=False, **kw)


def _classifier(head: TrainedHead) -> np.ndarray:
    """The class rows of a head trained with labels (only procrustes trains none)."""
    assert head.classifier is not None
    return head.classifier.numpy()


def _pair(q: np.ndarray, g: np.ndarray, labels: np.ndarray) -> dict:
    return metrics.evaluate(q, g, labels).summary()


def chain(cfg: GenConfig) -> dict:
    t0 = time.perf_counter()
    train, test, f, _ = _data(cfg, ["lite0", "lite1", "lite2"])
    y, n = train.labels, len(train.classes)
    c1, c2 = n // 3, (2 * n) // 3
    m1, m2 = y < c1, y < c2
    v1 = _train(cfg, "independent", f["lite0"][0][m1], y[m1], c1)
    v1_train = v1.embed(f["lite0"][0])
    w1 = old_classifier_rows(v1_train, y, n, _classifier(v1))
    v2 = _train(cfg, "bct", f["lite1"][0][m2], y[m2], c2, old_classifier=w1[:c2])
    v2_train = v2.embed(f["lite1"][0])
    w2 = old_classifier_rows(v2_train, y, n, _classifier(v2))
    v3 = _train(cfg, "bct", f["lite2"][0], y, n, old_classifier=w2)
    v3d = _train(cfg, "bct", f["lite2"][0], y, n, old_classifier=w1)
    v2i = _train(cfg, "independent", f["lite1"][0][m2], y[m2], c2)
    v3i = _train(cfg, "independent", f["lite2"][0], y, n)
    emb = {"v1": v1.embed(f["lite0"][1]), "v2": v2.embed(f["lite1"][1]),
           "v3": v3.embed(f["lite2"][1]), "v3-direct": v3d.embed(f["lite2"][1])}
    ind = {"v2-independent": v2i.embed(f["lite1"][1]), "v3-independent": v3i.embed(f["lite2"][1])}
    labels = test.labels
    matrix = {q: {g: _pair(emb[q], emb[g], labels) for g in ("v1", "v2", "v3")} for q in emb}
    own = {k: _pair(v, v, labels) for k, v in {**emb, **ind}.items()}
    tax = {gen: {m: round(own[f"{gen}-independent"][m] - own[gen][m], 4) for m in ("top1", "map")}
           for gen in ("v2", "v3")}
    return {"classes": {"v1": c1, "v2": c2, "v3": n}, "backbones": {"v1": "lite0", "v2": "lite1", "v3": "lite2"},
            "matrix": matrix, "self": own, "compatibility_tax": tax,
            "criterion": {q: {"top1": matrix[q]["v1"]["top1"] > matrix["v1"]["v1"]["top1"],
                              "map": matrix[q]["v1"]["map"] > matrix["v1"]["v1"]["map"]}
                          for q in ("v2", "v3", "v3-direct")},
            "seconds": round(time.perf_counter() - t0, 1)}


def throughput(name: str, n: int = 64, batch: int = 16) -> float:
    """Images per second of `name` on random batches (after one warm-up batch): embedding
    only, no decoding."""
    model = registry.load(name)
    x = torch.randn(batch, 3, model.info.image_size, model.info.image_size)
    model.embed_batch(x)
    t = time.perf_counter()
    for _ in range(n // batch):
        model.embed_batch(x)
    return round(n / (time.perf_counter() - t), 2)


def hetero(cfg: GenConfig) -> dict:
    t0 = time.perf_counter()
    train, test, f, speed = _data(cfg, ["lite0", "lite1", "lite2"])
    y, n = train.labels, len(train.classes)
    cloud = _train(cfg, "independent", f["lite2"][0], y, n)
    w = old_classifier_rows(cloud.embed(f["lite2"][0]), y, n, _classifier(cloud))
    gallery = cloud.embed(f["lite2"][1])
    labels = test.labels
    rows = [{"query_model": "lite2 (cloud, same model)", "backbone": "lite2",
             **_pair(gallery, gallery, labels), "images_per_s": speed["lite2"]}]
    for b in ("lite1", "lite0"):
        small = _train(cfg, "bct", f[b][0], y, n, old_classifier=w)
        own = _train(cfg, "independent", f[b][0], y, n)
        q = small.embed(f[b][1])
        rows.append({"query_model": f"{b} compatible with cloud", "backbone": b,
                     **_pair(q, gallery, labels), "images_per_s": speed[b],
                     "standalone_self": _pair(own.embed(f[b][1]), own.embed(f[b][1]), labels)})
    return {"gallery_model": "lite2 independent head (cloud)", "rows": rows,
            "seconds": round(time.perf_counter() - t0, 1)}
