"""INS / PiCO rules against tiny hand-computed cases and plain-loop references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medcl.losses.ins import (
    INSContrastiveLoss,
    PartialLabelLoss,
    candidate_sets,
    classifier_pseudo_labels,
    confidence_momentum,
    initial_confidence,
    prototype_pseudo_labels,
    update_confidence,
    update_prototypes,
)


def test_candidates_and_initial_confidence_by_hand() -> None:
    cand = candidate_sets(torch.tensor([0, 1, 2]), 3)
    assert cand.tolist() == [[1, 0, 0], [1, 1, 0], [1, 0, 1]]
    assert initial_confidence(cand).tolist() == [[1, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5]]
    with pytest.raises(ValueError, match=r"bag labels must be in 0..1, got \[0, 2\]"):
        candidate_sets(torch.tensor([0, 2]), 2)


def test_confidence_momentum_falls_linearly_with_the_reference_lag() -> None:
    assert confidence_momentum(0, 40) == pytest.approx(0.95)
    assert confidence_momentum(1, 40) == pytest.approx(0.95)  # set after epoch 0
    assert confidence_momentum(2, 40) == pytest.approx(0.95 - 0.15 / 40)
    assert confidence_momentum(40, 40) == pytest.approx(0.95 - 0.15 * 39 / 40)
    assert confidence_momentum(3, 10, 0.9, 0.5) == pytest.approx(0.9 - 0.4 * 2 / 10)


def test_pseudo_labels_stay_inside_the_candidates() -> None:
    logits = torch.tensor([[0.0, 2.0], [0.0, 2.0], [2.0, 0.0]])
    cand = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    # the classifier prefers class 1 for the first instance, but it comes from a negative bag
    assert classifier_pseudo_labels(logits, cand).tolist() == [0, 1, 0]
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    assert prototype_pseudo_labels(z, protos, cand).tolist() == [0, 1, 0]


def test_update_confidence_is_a_moving_average_to_the_one_hot() -> None:
    conf = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    out = update_confidence(conf, torch.tensor([1, 0]), 0.9)
    assert torch.allclose(out, torch.tensor([[0.45, 0.55], [1.0, 0.0]]))
    assert conf.tolist() == [[0.5, 0.5], [1.0, 0.0]]  # not in place
    with pytest.raises(ValueError, match="momentum"):
        update_confidence(conf, torch.tensor([1, 0]), 1.5)


def test_update_prototypes_by_hand_and_against_a_sequential_loop() -> None:
    protos = torch.zeros(2, 2)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = update_prototypes(protos, z, torch.tensor([1, 1]), 0.5)
    # p1 = .5 * 0 + .5 * [1, 0] = [.5, 0]; then .5 * [.5, 0] + .5 * [0, 1] = [.25, .5]
    assert out[1].tolist() == pytest.approx([1 / math.sqrt(5), 2 / math.sqrt(5)])
    assert out[0].tolist() == [0.0, 0.0]  # no member: stays zero
    g = torch.Generator().manual_seed(0)
    protos = F.normalize(torch.randn(3, 4, generator=g), dim=1)
    z = F.normalize(torch.randn(9, 4, generator=g), dim=1)
    labels = torch.tensor([2, 0, 2, 2, 1, 0, 2, 1, 2])
    expected = protos.clone()
    for feat, lab in zip(z, labels, strict=True):  # the reference's per-instance loop
        expected[lab] = expected[lab] * 0.9 + 0.1 * feat
    expected = F.normalize(expected, dim=1)
    assert torch.allclose(update_prototypes(protos, z, labels, 0.9), expected, atol=1e-6)


def test_partial_label_loss_by_hand() -> None:
    loss = PartialLabelLoss()
    assert float(loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))) == pytest.approx(math.log(2))
    logits = torch.tensor([[math.log(3.0), 0.0]])  # p = [.75, .25]
    expected = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    assert float(loss(logits, torch.tensor([[0.5, 0.5]]))) == pytest.approx(expected)
    with pytest.raises(ValueError, match="differ"):
        loss(torch.zeros(2, 2), torch.zeros(2, 3))


def _plain_moco(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, t: float) -> float:
    losses = []
    for i in range(len(q)):
        pos = math.exp(float(q[i] @ k[i]) / t)
        den = sum(math.exp(float(q[i] @ c) / t) for c in [*k, *queue])
        losses.append(-math.log(pos / den))
    return sum(losses) / len(losses)


def _plain_supcon(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    lab: list[int],
    qlab: list[int],
    t: float,
) -> float:
    feats, labels = [*q, *k, *queue], [*lab, *lab, *qlab]
    losses = []
    for i in range(len(q)):
        den = sum(math.exp(float(q[i] @ f) / t) for j, f in enumerate(feats) if j != i)
        pos = [j for j in range(len(feats)) if j != i and labels[j] == lab[i]]
        log_probs = [float(q[i] @ feats[j]) / t - math.log(den) for j in pos]
        losses.append(-sum(log_probs) / len(pos))
    return sum(losses) / len(losses)


def test_contrast_is_moco_in_warmup_and_supcon_after() -> None:
    g = torch.Generator().manual_seed(1)
    q, k, queue = (F.normalize(torch.randn(n, 5, generator=g), dim=1) for n in (3, 3, 4))
    loss = INSContrastiveLoss(temperature=0.5)
    assert float(loss(q, k, queue)) == pytest.approx(_plain_moco(q, k, queue, 0.5), rel=1e-5)
    lab, qlab = [0, 1, 1], [1, 0, 0, 1]
    got = float(loss(q, k, queue, torch.tensor(lab), torch.tensor(qlab)))
    assert got == pytest.approx(_plain_supcon(q, k, queue, lab, qlab, 0.5), rel=1e-5)
    # an empty queue works (the start of training)
    empty = torch.zeros(0, 5)
    assert float(loss(q, k, empty)) == pytest.approx(_plain_moco(q, k, empty, 0.5), rel=1e-5)
    with pytest.raises(ValueError, match="one label per queue entry"):
        loss(q, k, queue, torch.tensor(lab), torch.tensor([0]))
