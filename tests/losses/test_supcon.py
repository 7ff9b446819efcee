"""SupCon against a plain loop over anchors (Khosla et al. 2020, L_out)."""

from __future__ import annotations

import math

import pytest
import torch

from medcl.losses.ntxent import NTXentLoss
from medcl.losses.supcon import SupConLoss


def reference_supcon(
    features: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    base_temperature: float,
) -> torch.Tensor:
    """Khosla et al. eq. 2 written out: view-major anchors, positives = same label, not self."""
    b, v, _ = features.shape
    z = [features[i, k] for k in range(v) for i in range(b)]
    lab = [(int(labels[i]) if labels is not None else i) for _ in range(v) for i in range(b)]
    n = len(z)
    total, count = features.new_zeros(()), 0
    for i in range(n):
        s = [torch.dot(z[i], z[j]) / (z[i].norm() * z[j].norm()) / temperature for j in range(n)]
        den = sum((torch.exp(s[a]) for a in range(n) if a != i), features.new_zeros(()))
        pos = [p for p in range(n) if p != i and lab[p] == lab[i]]
        if not pos:
            continue
        mean_log_prob = sum(s[p] - torch.log(den) for p in pos) / len(pos)
        total = total - temperature / base_temperature * mean_log_prob
        count += 1
    return total / max(count, 1)


@pytest.mark.parametrize(
    ("temperature", "base", "views", "labels"),
    [
        (0.1, None, 2, [0, 1, 0, 2, 1]),
        (0.07, 0.07, 3, [1, 1, 1, 1, 1]),
        (0.5, 0.1, 2, [0, 1, 2, 3, 4]),
        (0.2, None, 2, None),
        (0.3, None, 1, [0, 0, 1, 1, 2]),
    ],
)
def test_matches_reference_values_and_gradients(
    temperature: float, base: float | None, views: int, labels: list[int] | None
) -> None:
    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(5, views, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    lab = None if labels is None else torch.tensor(labels)
    loss = SupConLoss(temperature, base_temperature=base)(feats, lab)
    ref = reference_supcon(feats, lab, temperature, temperature if base is None else base)
    assert torch.allclose(loss, ref, atol=1e-5, rtol=0)
    (grad,) = torch.autograd.grad(loss, feats)
    (ref_grad,) = torch.autograd.grad(ref, feats)
    assert torch.allclose(grad, ref_grad, atol=1e-5, rtol=0)


def test_hand_computed_two_images_same_class() -> None:
    # Image 0: both views e1; image 1: both views e2; one class; T = 1. Each anchor has three
    # positives (s = 1, 0, 0) and denominator e + 2: loss = log(e + 2) - 1/3.
    e1, e2 = torch.eye(2, dtype=torch.float64)
    feats = torch.stack([torch.stack([e1, e1]), torch.stack([e2, e2])])
    labels = torch.tensor([0, 0])
    expected = math.log(math.e + 2) - 1 / 3
    assert SupConLoss(1.0)(feats, labels).item() == pytest.approx(expected)
    # temperature / base_temperature scales the loss.
    assert SupConLoss(1.0, base_temperature=2.0)(feats, labels).item() == pytest.approx(
        expected / 2
    )


def test_without_labels_is_ntxent() -> None:
    gen = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(2, 6, 8, generator=gen, dtype=torch.float64)
    supcon = SupConLoss(0.2)(torch.stack([z1, z2], dim=1))
    assert torch.allclose(supcon, NTXentLoss(0.2)(z1, z2), atol=1e-12, rtol=0)


def test_gather_is_a_noop_in_one_process() -> None:
    feats = torch.randn(4, 2, 3, dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])
    plain = SupConLoss(0.1)(feats, labels)
    assert torch.equal(plain, SupConLoss(0.1, gather_distributed=True)(feats, labels))


def test_bad_arguments_and_shapes() -> None:
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        SupConLoss(temperature=0.0)
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        SupConLoss(base_temperature=-0.1)
    with pytest.raises(ValueError, match="gather_distributed must be a bool"):
        SupConLoss(gather_distributed=1)  # type: ignore[arg-type]
    loss = SupConLoss()
    with pytest.raises(ValueError, match=r"features must have shape \(B, V, D\)"):
        loss(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        loss(torch.randn(4, 2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must be integers"):
        loss(torch.randn(4, 2, 3), torch.tensor([0.0, 1.0, 0.0, 1.0]))
