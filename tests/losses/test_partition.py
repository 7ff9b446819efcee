from __future__ import annotations

import math

import pytest
import torch

from medcl.losses.partition import (
    GLOBAL_LOSSES,
    GlobalGDLoss,
    GlobalGDMinusLoss,
    GlobalGRLoss,
    create_global_loss,
    list_global_losses,
    partition_masks,
)


def reference_global(
    z1: torch.Tensor,
    z2: torch.Tensor,
    partition: list[int],
    volume: list[int],
    temperature: float,
    variant: str,
) -> torch.Tensor:
    """Plain loops over the 2B anchors, straight from the paper's definitions."""
    z = torch.cat([z1, z2])
    b = z1.shape[0]
    n = 2 * b

    def img(i: int) -> int:
        return i % b

    def related(i: int, j: int) -> bool:
        return partition[img(i)] == partition[img(j)] and volume[img(i)] != volume[img(j)]

    def sim(i: int, j: int) -> torch.Tensor:
        return torch.dot(z[i], z[j]) / (z[i].norm() * z[j].norm()) / temperature

    total = z.new_zeros(())
    for i in range(n):
        other_view = (i + b) % n
        positives = [other_view]
        denominator = [a for a in range(n) if a != i]
        if variant == "gd-":
            denominator = [a for a in denominator if not related(i, a)]
        if variant == "gd":
            positives += [a for a in range(n) if related(i, a)]
        den = sum(torch.exp(sim(i, a)) for a in denominator)
        li = sum(-torch.log(torch.exp(sim(i, p)) / den) for p in positives)
        total = total + li / len(positives)
    return total / n


CASES = {
    "gr": GlobalGRLoss,
    "gd-": GlobalGDMinusLoss,
    "gd": GlobalGDLoss,
}


def _batch(seed: int, b: int = 6, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, d, generator=g, dtype=torch.float64),
        torch.randn(b, d, generator=g, dtype=torch.float64),
    )


@pytest.mark.parametrize("variant", ["gr", "gd-", "gd"])
def test_global_losses_match_plain_reference(variant: str) -> None:
    z1, z2 = _batch(0)
    partition = [0, 1, 2, 0, 1, 0]
    volume = [0, 0, 0, 1, 1, 2]
    p, v = torch.tensor(partition), torch.tensor(volume)
    loss = CASES[variant](temperature=0.1)
    a1 = z1.clone().requires_grad_(True)
    a2 = z2.clone().requires_grad_(True)
    ours = loss(a1, a2, p, v)
    g_ours = torch.autograd.grad(ours, [a1, a2])
    r1 = z1.clone().requires_grad_(True)
    r2 = z2.clone().requires_grad_(True)
    ref = reference_global(r1, r2, partition, volume, 0.1, variant)
    g_ref = torch.autograd.grad(ref, [r1, r2])
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)
    for go, gr in zip(g_ours, g_ref, strict=True):
        assert torch.allclose(go, gr, atol=1e-5, rtol=0)


def test_the_three_variants_differ_when_partitions_repeat_across_volumes() -> None:
    z1, z2 = _batch(1)
    p = torch.tensor([0, 1, 2, 0, 1, 2])
    v = torch.tensor([0, 0, 0, 1, 1, 1])
    values = {name: cls(0.1)(z1, z2, p, v).item() for name, cls in CASES.items()}
    assert len({round(x, 6) for x in values.values()}) == 3


def test_hand_computed_gd_and_gd_minus() -> None:
    # Two images of partition 0 from volumes 0 and 1; both views equal:
    # stacked [a, b, a', b'] = [(1,0), (0,1), (1,0), (0,1)], T = 1.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    p = torch.tensor([0, 0])
    v = torch.tensor([0, 1])
    # G^R: anchor a, positive a' (cos 1), denominator {b: 0, a': 1, b': 0}: log(1 + 2/e).
    assert GlobalGRLoss(1.0)(z, z.clone()).item() == pytest.approx(math.log(1 + 2 / math.e))
    # G^{D-}: b and b' are excluded, the denominator is a' alone: -log(e / e) = 0.
    assert GlobalGDMinusLoss(1.0)(z, z.clone(), p, v).item() == pytest.approx(0.0, abs=1e-12)
    # G^D: positives {a': 1, b: 0, b': 0}, denominator the same three, lse = log(e + 2):
    #   l_a = -1/3 * ((1 - lse) + (0 - lse) + (0 - lse)) = log(e + 2) - 1/3.
    expected = math.log(math.e + 2) - 1 / 3
    assert GlobalGDLoss(1.0)(z, z.clone(), p, v).item() == pytest.approx(expected, abs=1e-12)


def test_gd_minus_with_one_volume_equals_gr() -> None:
    z1, z2 = _batch(2)
    p = torch.tensor([0, 1, 0, 1, 2, 2])
    v = torch.zeros(6, dtype=torch.long)
    gr = GlobalGRLoss(0.1)(z1, z2)
    assert GlobalGDMinusLoss(0.1)(z1, z2, p, v).item() == pytest.approx(gr.item(), abs=1e-12)


def test_gd_without_cross_volume_matches_equals_gr() -> None:
    z1, z2 = _batch(3)
    # Each partition occurs in one volume only (same-volume repeats are ordinary negatives).
    p = torch.tensor([0, 0, 1, 2, 3, 3])
    v = torch.tensor([0, 0, 1, 1, 2, 2])
    gr = GlobalGRLoss(0.1)(z1, z2)
    assert GlobalGDLoss(0.1)(z1, z2, p, v).item() == pytest.approx(gr.item(), abs=1e-12)
    assert GlobalGDMinusLoss(0.1)(z1, z2, p, v).item() == pytest.approx(gr.item(), abs=1e-12)


def test_partition_masks_by_hand() -> None:
    p = torch.tensor([0, 0, 1])
    v = torch.tensor([0, 1, 1])
    positives, exclude = partition_masks(p, v, domain_positives=False)
    related = torch.zeros(6, 6, dtype=torch.bool)
    for i, j in [(0, 1), (1, 0)]:  # images 0 and 1: partition 0, volumes 0 and 1
        for vi in (0, 3):
            for vj in (0, 3):
                related[i + vi, j + vj] = True
    views = torch.zeros(6, 6, dtype=torch.bool)
    for i in range(3):
        views[i, i + 3] = views[i + 3, i] = True
    assert torch.equal(positives, views)
    assert torch.equal(exclude, related)
    positives, exclude = partition_masks(p, v, domain_positives=True)
    assert torch.equal(positives, views | related)
    assert not exclude.any()


def test_registry_and_factory() -> None:
    assert list_global_losses() == ["gd", "gd-", "gr"]
    assert set(GLOBAL_LOSSES) == {"gr", "gd-", "gd"}
    loss = create_global_loss("gd-", temperature=0.5)
    assert isinstance(loss, GlobalGDMinusLoss) and loss.temperature == 0.5
    assert isinstance(create_global_loss("gd"), GlobalGDLoss)
    assert isinstance(create_global_loss("gr"), GlobalGRLoss)
    with pytest.raises(ValueError, match="unknown global loss 'simclr'; valid names: gd, gd-, gr"):
        create_global_loss("simclr")


@pytest.mark.parametrize("cls", [GlobalGRLoss, GlobalGDMinusLoss, GlobalGDLoss])
def test_bad_arguments_raise(cls: type) -> None:
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        cls(temperature=0.0)
    loss = cls(0.1)
    p = torch.zeros(4, dtype=torch.long)
    v = torch.arange(4)
    with pytest.raises(ValueError, match=r"z1 and z2 must both have shape \(B, D\)"):
        loss(torch.randn(4, 3), torch.randn(4, 2), p, v)
    with pytest.raises(ValueError, match=r"z1 and z2 must both have shape \(B, D\)"):
        loss(torch.randn(4, 3, 1), torch.randn(4, 3, 1), p, v)
    if cls is not GlobalGRLoss:
        with pytest.raises(ValueError, match=r"partition must have shape \(4,\)"):
            loss(torch.randn(4, 3), torch.randn(4, 3), p[:3], v)
        with pytest.raises(ValueError, match="volume must hold integer ids"):
            loss(torch.randn(4, 3), torch.randn(4, 3), p, v.float())
