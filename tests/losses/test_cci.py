"""CCI loss against a plain loop reference, a hand-computed case and SupCon (Zhou et al. 2024)."""

from __future__ import annotations

import math

import pytest
import torch

from medcl.losses.cci import CCILoss, cci_masks
from medcl.losses.contrastive import masked_info_nce


def reference_cci(
    z: torch.Tensor,
    z_aug: torch.Tensor,
    labels: list[int],
    domains: list[int],
    temperature: float,
    cross_domain_weight: float,
    invariance_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two terms written out with loops: weighted SupCon L_out over [z; z_aug], invariance."""
    emb = [z[i] for i in range(len(labels))] + [z_aug[i] for i in range(len(labels))]
    lab, dom = labels + labels, domains + domains
    n = len(emb)

    def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.dot(a, b) / (a.norm() * b.norm())

    total, count = z.new_zeros(()), 0
    for i in range(n):
        s = [cos(emb[i], emb[j]) / temperature for j in range(n)]
        den = sum((torch.exp(s[a]) for a in range(n) if a != i), z.new_zeros(()))
        pos = [p for p in range(n) if p != i and lab[p] == lab[i]]
        if not pos:
            continue
        acc = z.new_zeros(())
        for p in pos:
            w = cross_domain_weight if dom[p] != dom[i] else 1.0
            acc = acc + w * (s[p] - torch.log(den))
        total = total - acc / len(pos)
        count += 1
    supcon = total / max(count, 1)
    inv = sum((1 - cos(z[i], z_aug[i]) for i in range(len(labels))), z.new_zeros(()))
    return supcon, invariance_weight * inv / len(labels)


@pytest.mark.parametrize(
    ("temperature", "cdw", "inv", "labels", "domains"),
    [
        (0.1, 2.0, 1.0, [0, 1, 0, 2, 1, 0], [0, 0, 1, 1, 2, 2]),
        (0.5, 3.0, 0.25, [1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 0, 1]),
        (0.2, 1.0, 0.0, [0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 1, 1]),
        (1.0, 0.5, 2.0, [0, 0, 1, 1, 0, 1], [3, 3, 3, 3, 3, 3]),
    ],
)
def test_matches_loop_reference_values_and_gradients(
    temperature: float, cdw: float, inv: float, labels: list[int], domains: list[int]
) -> None:
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    z_aug = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    loss_fn = CCILoss(temperature, cross_domain_weight=cdw, invariance_weight=inv)
    loss, terms = loss_fn.forward_terms(z, z_aug, torch.tensor(labels), torch.tensor(domains))
    ref_supcon, ref_inv = reference_cci(z, z_aug, labels, domains, temperature, cdw, inv)
    assert torch.allclose(terms["supcon"], ref_supcon, atol=1e-5, rtol=0)
    assert torch.allclose(terms["invariance"], ref_inv, atol=1e-5, rtol=0)
    assert torch.allclose(loss, ref_supcon + ref_inv, atol=1e-5, rtol=0)
    grads = torch.autograd.grad(loss, (z, z_aug))
    ref_grads = torch.autograd.grad(ref_supcon + ref_inv, (z, z_aug))
    for g, rg in zip(grads, ref_grads, strict=True):
        assert torch.allclose(g, rg, atol=1e-5, rtol=0)
    # forward is the same number; last_terms keeps plain floats for logging.
    assert loss_fn(z, z_aug, torch.tensor(labels), torch.tensor(domains)).item() == pytest.approx(
        loss.item(), abs=1e-12
    )
    assert loss_fn.last_terms == pytest.approx(
        {"supcon": ref_supcon.item(), "invariance": ref_inv.item()}, abs=1e-9
    )


def test_hand_computed_two_images() -> None:
    # z = [e1, e2] (domains 0, 1), z_aug = [e2, e1], one class, T = 1, w = 2, invariance 0.5.
    # Stacked: a0 = e1 (d0), a1 = e2 (d1), a2 = e2 (d0), a3 = e1 (d1). Each anchor has denominator
    # e + 2 (L = log(e + 2)) and three positives: one s = 1 at weight 2 and two s = 0 at weights
    # 2 and 1, so l = -(2 (1 - L) + 2 (-L) + (-L)) / 3 = (5L - 2) / 3 for every anchor.
    # Each image is orthogonal to its view: invariance = 0.5 * (1 - 0) = 0.5.
    e1, e2 = torch.eye(2, dtype=torch.float64)
    z, z_aug = torch.stack([e1, e2]), torch.stack([e2, e1])
    labels, domains = torch.tensor([0, 0]), torch.tensor([0, 1])
    loss_fn = CCILoss(1.0, cross_domain_weight=2.0, invariance_weight=0.5)
    loss, terms = loss_fn.forward_terms(z, z_aug, labels, domains)
    big_l = math.log(math.e + 2)
    assert terms["supcon"].item() == pytest.approx((5 * big_l - 2) / 3, abs=1e-12)
    assert terms["invariance"].item() == pytest.approx(0.5, abs=1e-12)
    assert loss.item() == pytest.approx((5 * big_l - 2) / 3 + 0.5, abs=1e-12)


def test_identical_views_have_zero_invariance() -> None:
    z = torch.tensor([[3.0, 4.0], [1.0, -2.0]], dtype=torch.float64)
    loss_fn = CCILoss(invariance_weight=5.0)
    _, terms = loss_fn.forward_terms(z, 2 * z, torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert terms["invariance"].item() == pytest.approx(0.0, abs=1e-12)


def test_unit_weights_without_invariance_is_supcon_via_masked_info_nce() -> None:
    gen = torch.Generator().manual_seed(11)
    z, z_aug = torch.randn(2, 8, 4, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 2, 0, 2, 2, 1])
    domains = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    lab2 = torch.cat([labels, labels])
    supcon = masked_info_nce(torch.cat([z, z_aug]), lab2[:, None] == lab2[None, :], temperature=0.3)
    cci = CCILoss(0.3, cross_domain_weight=1.0, invariance_weight=0.0)(z, z_aug, labels, domains)
    assert torch.allclose(cci, supcon, atol=1e-12, rtol=0)


def test_cross_domain_weight_changes_loss_only_with_cross_domain_positives() -> None:
    gen = torch.Generator().manual_seed(12)
    z, z_aug = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
    labels, one_domain = torch.tensor([0, 0, 1, 1]), torch.tensor([5, 5, 5, 5])
    a = CCILoss(cross_domain_weight=1.0)(z, z_aug, labels, one_domain)
    b = CCILoss(cross_domain_weight=4.0)(z, z_aug, labels, one_domain)
    assert torch.allclose(a, b, atol=1e-12, rtol=0)
    two_domains = torch.tensor([0, 1, 0, 1])
    c = CCILoss(cross_domain_weight=4.0)(z, z_aug, labels, two_domains)
    assert not torch.allclose(a, c)


def test_masks_hand_built() -> None:
    positives, weights = cci_masks(torch.tensor([0, 1]), torch.tensor([0, 1]), 3.0)
    assert positives.tolist() == [
        [True, False, True, False],
        [False, True, False, True],
        [True, False, True, False],
        [False, True, False, True],
    ]
    assert weights.tolist() == [
        [1.0, 3.0, 1.0, 3.0],
        [3.0, 1.0, 3.0, 1.0],
        [1.0, 3.0, 1.0, 3.0],
        [3.0, 1.0, 3.0, 1.0],
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature must be a positive number, got 0.0"),
        ({"cross_domain_weight": 0.0}, "cross_domain_weight must be a finite number > 0, got 0.0"),
        (
            {"cross_domain_weight": float("inf")},
            "cross_domain_weight must be a finite number > 0, got inf",
        ),
        ({"invariance_weight": -1.0}, "invariance_weight must be a finite number >= 0, got -1.0"),
        ({"invariance_weight": True}, "invariance_weight must be a finite number >= 0, got True"),
    ],
)
def test_bad_arguments(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError) as info:
        CCILoss(**kwargs)
    assert str(info.value) == message


def test_bad_shapes() -> None:
    loss_fn = CCILoss()
    z = torch.randn(3, 4)
    lab, dom = torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1])
    cases = [
        ((torch.randn(3), z, lab, dom), "z must have shape (B, D) with B >= 1, got (3,)"),
        ((torch.randn(0, 4), z, lab, dom), "z must have shape (B, D) with B >= 1, got (0, 4)"),
        ((z, torch.randn(3, 5), lab, dom), "z_aug must have the shape of z (3, 4), got (3, 5)"),
        ((z, z, lab[:2], dom), "labels must have shape (3,), got (2,)"),
        ((z, z, lab, dom[None]), "domains must have shape (3,), got (1, 3)"),
        ((z, z, lab.float(), dom), "labels must be integers, got dtype torch.float32"),
        (
            (z.long(), z.long(), lab, dom),
            "z and z_aug must be floating point, got torch.int64 and torch.int64",
        ),
    ]
    for args, message in cases:
        with pytest.raises(ValueError) as info:
            loss_fn(*args)
        assert str(info.value) == message
