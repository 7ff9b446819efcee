"""End-to-end INS: the image encoder is trained by the instance losses; views; image bags."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medcl.mil.data import Bag
from medcl.mil.ins_e2e import (
    FlatImageEncoder,
    ImageINS,
    augment,
    augment_views,
    flat_images,
    image_side,
)
from medcl.mil.ins_train import INSOptions, fit_ins
from medcl.mil.predict import mil_metrics, predict_bags

SIZE = 8


def _encoder() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )


def image_bags(n: int, seed: int) -> list[Bag]:
    """Grey noise images; a positive bag (odd index) holds 1-2 images with a red square."""
    g = np.random.default_rng(seed)
    bags = []
    for i in range(n):
        size = int(g.integers(6, 10))
        images = np.clip(g.normal(0.5, 0.1, (size, 3, SIZE, SIZE)), 0, 1).astype(np.float32)
        inst = np.zeros(size, dtype=np.int64)
        if i % 2:
            k = int(g.integers(1, 3))
            images[:k, 0, 2:6, 2:6] = 1.0
            images[:k, 1:, 2:6, 2:6] = 0.1
            inst[:k] = 1
        x = flat_images(torch.from_numpy(images))
        bags.append(Bag(x, i % 2, f"b{seed}_{i}", instance_labels=torch.from_numpy(inst)))
    return bags


def test_flat_encoder_and_views_keep_shapes() -> None:
    enc = FlatImageEncoder(_encoder(), SIZE)
    x = torch.rand(2, 5, 3 * SIZE * SIZE)
    assert enc(x).shape == (2, 5, 8)
    assert enc(torch.zeros(0, 3 * SIZE * SIZE)).shape == (0, 8)
    assert image_side(3 * SIZE * SIZE) == SIZE
    with pytest.raises(ValueError, match="not 3 \\* s \\* s"):
        image_side(10)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, SIZE, SIZE)
    strong = augment(images, g, strong=True)
    assert strong.shape == images.shape and strong.min() >= 0 and strong.max() <= 1
    weak = augment(images, g, strong=False)  # flips / rotations only: the same pixel values
    assert torch.allclose(weak.flatten(1).sort(dim=1).values, images.flatten(1).sort(dim=1).values)
    q, k = augment_views(SIZE, seed=0)(images.reshape(4, -1))
    assert q.shape == k.shape == (4, 3 * SIZE * SIZE) and not torch.equal(q, k)


def test_end_to_end_ins_trains_the_encoder_and_finds_the_witnesses() -> None:
    torch.manual_seed(0)
    model = ImageINS(_encoder(), 8, SIZE, hidden_dim=16, dropout=0.0, proj_dim=8)
    conv_before = model.embed[0].encoder[0].weight.detach().clone()
    train, test = image_bags(40, 0), image_bags(30, 1)
    opts = INSOptions(epochs=6, warmup_epochs=2, batch_size=32, lr=0.05, queue_size=256)
    history = fit_ins(
        model, train, None, opts, n_classes=2, seed=0, views=augment_views(SIZE),
        diagnose_train=False,
    )  # fmt: skip
    assert len(history) == 6 and all(np.isnan(r["classifier_acc"]) for r in history)
    # the instance losses reached the encoder (as in the paper), not only the head
    assert not torch.allclose(model.embed[0].encoder[0].weight, conv_before)
    metrics = mil_metrics(test, predict_bags(model, test))
    assert metrics["instance_auc"] > 0.85, metrics
    assert metrics["auc"] > 0.8, metrics
