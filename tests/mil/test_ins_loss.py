"""INS instance losses against hand-made cases and plain-loop references."""

from __future__ import annotations

import math

import pytest
import torch

from medcl.losses.ins import (
    InstanceClassificationLoss,
    InstanceContrastiveLoss,
    ins_pseudo_labels,
    update_prototypes,
)

MASK = torch.tensor([[True, True, True, False], [True, True, True, True]])
BAG_LABELS = torch.tensor([0, 1])
SCORES = torch.tensor([[0.9, 0.1, 0.2, 0.0], [0.3, 0.8, 0.6, 0.55]])
# prototypes: class 0 along x, class 1 along y
PROTOS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
EMB = torch.tensor(
    [
        [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]],
        # i0 near pos but score 0.3; i1 near neg but the top score; i2 near neg; i3 near pos, 0.55
        [[0.0, 1.0], [1.0, 0.0], [1.0, 0.2], [0.2, 1.0]],
    ]
)


def test_pseudo_labels_prototype_rule() -> None:
    labels = ins_pseudo_labels(SCORES, MASK, BAG_LABELS, EMB, PROTOS, threshold=0.5)
    assert labels.tolist() == [[0, 0, 0, -1], [0, 1, 0, 1]]
    strict = ins_pseudo_labels(SCORES, MASK, BAG_LABELS, EMB, PROTOS, threshold=0.9)
    assert strict.tolist() == [[0, 0, 0, -1], [0, 1, 0, 0]]


def test_pseudo_labels_warmup_modes() -> None:
    top = ins_pseudo_labels(SCORES, MASK, BAG_LABELS, EMB, None)
    assert top.tolist() == [[0, 0, 0, -1], [-1, 1, -1, -1]]
    assert ins_pseudo_labels(SCORES, MASK, BAG_LABELS, EMB, PROTOS, mode="top").equal(top)
    inherit = ins_pseudo_labels(SCORES, MASK, BAG_LABELS, mode="inherit")
    assert inherit.tolist() == [[0, 0, 0, -1], [1, 1, 1, 1]]
    empty = ins_pseudo_labels(SCORES, torch.zeros_like(MASK), BAG_LABELS)
    assert (empty == -1).all()
    with pytest.raises(ValueError, match="mode must be"):
        ins_pseudo_labels(SCORES, MASK, BAG_LABELS, mode="all")  # type: ignore[arg-type]


def test_update_prototypes_by_hand() -> None:
    emb = torch.tensor([[[3.0, 0.0], [0.0, 2.0], [0.0, 4.0]]])
    first = update_prototypes(None, emb, torch.tensor([[0, 1, -1]]), 2, momentum=0.5)
    assert first is not None
    assert torch.allclose(first, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    second = update_prototypes(first, torch.tensor([[0.0, 1.0]]), torch.tensor([0]), 2, 0.5)
    assert second is not None
    r = 1 / math.sqrt(2)
    assert torch.allclose(second, torch.tensor([[r, r], [0.0, 1.0]]), atol=1e-6)
    assert update_prototypes(None, emb, torch.full((1, 3), -1), 2, 0.5) is None


def _ce(logits: torch.Tensor, label: int) -> float:
    return -(float(logits[label]) - math.log(sum(math.exp(float(v)) for v in logits)))


def test_instance_classification_loss_matches_loop() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 2, generator=g, requires_grad=True)
    pseudo = torch.tensor([[0, 0, 0, -1], [0, 1, -1, 1]])
    per_class: dict[int, list[float]] = {0: [], 1: []}
    for b in range(2):
        for n in range(4):
            if pseudo[b, n] >= 0:
                per_class[int(pseudo[b, n])].append(_ce(logits[b, n].detach(), int(pseudo[b, n])))
    balanced = sum(sum(v) / len(v) for v in per_class.values()) / 2
    plain = sum(sum(v) for v in per_class.values()) / 6
    got = InstanceClassificationLoss()(logits, pseudo)
    assert got.item() == pytest.approx(balanced, rel=1e-5)
    assert InstanceClassificationLoss(balanced=False)(logits, pseudo).item() == pytest.approx(
        plain, rel=1e-5
    )
    got.backward()
    assert logits.grad is not None and (logits.grad[0, 3] == 0).all()  # padding gets no gradient
    none = InstanceClassificationLoss()(logits, torch.full((2, 4), -1))
    assert none.item() == 0.0 and none.requires_grad


def _supcon_reference(z: torch.Tensor, labels: list[int], t: float) -> float:
    keep = [i for i, lab in enumerate(labels) if lab >= 0]
    zn = torch.nn.functional.normalize(z, dim=-1)
    total, anchors = 0.0, 0
    for i in keep:
        pos = [j for j in keep if j != i and labels[j] == labels[i]]
        if not pos:
            continue
        denom = sum(math.exp(float(zn[i] @ zn[a]) / t) for a in keep if a != i)
        total += -sum(math.log(math.exp(float(zn[i] @ zn[p]) / t) / denom) for p in pos) / len(pos)
        anchors += 1
    return total / anchors


def test_instance_contrastive_loss_matches_loop_and_ignores_padding() -> None:
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(2, 4, 5, generator=g)
    emb[0, 3] = 1e3  # padding junk
    pseudo = torch.tensor([[0, 0, 1, -1], [1, 0, -1, 1]])
    expected = _supcon_reference(emb.reshape(8, 5), pseudo.reshape(-1).tolist(), 0.2)
    got = InstanceContrastiveLoss(temperature=0.2)(emb, pseudo)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    single = InstanceContrastiveLoss()(emb, torch.tensor([[0, -1, -1, -1], [-1, -1, -1, -1]]))
    assert single.item() == 0.0


def test_contrastive_cap_keeps_every_positive() -> None:
    loss = InstanceContrastiveLoss(max_instances=4)
    picked = loss.select(torch.tensor([0, 0, 0, 0, 1, 1, -1]))
    assert len(picked) == 4 and {4, 5} <= set(picked.tolist()) and 6 not in picked.tolist()
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        InstanceContrastiveLoss(temperature=0.0)
