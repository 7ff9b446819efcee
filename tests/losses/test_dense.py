"""DenseLocalLoss against a plain loop over patches, regions and anchors."""

from __future__ import annotations

import math

import pytest
import torch

from medcl.losses.dense import DenseLocalLoss
from medcl.losses.local import LocalContrastiveLoss
from medcl.losses.registry import create_loss


def reference_dense(
    f1: torch.Tensor, f2: torch.Tensor, region: int, n_regions: int, step: int, temperature: float
) -> torch.Tensor:
    """Regions are the mean of ``region x region`` pixels at ``(y * step, x * step)``."""
    losses = []
    for b in range(f1.shape[0]):
        emb = []
        for f in (f1[b], f2[b]):
            for y in range(n_regions):
                for x in range(n_regions):
                    y0, x0 = y * step, x * step
                    v = f[:, y0 : y0 + region, x0 : x0 + region].mean(dim=(1, 2))
                    emb.append(v / v.norm())
        r = n_regions**2
        for i in range(2 * r):
            pos = (i + r) % (2 * r)
            den = sum(torch.exp(emb[i] @ emb[a] / temperature) for a in range(2 * r) if a != i)
            losses.append(-torch.log(torch.exp(emb[i] @ emb[pos] / temperature) / den))
    return torch.stack(losses).mean()


@pytest.mark.parametrize(
    ("size", "region", "n_regions", "step"), [(4, 2, 2, 2), (3, 1, 3, 1), (5, 1, 3, 2)]
)
def test_matches_reference_values_and_gradients(
    size: int, region: int, n_regions: int, step: int
) -> None:
    gen = torch.Generator().manual_seed(0)
    f1 = torch.randn(2, 3, size, size, generator=gen, dtype=torch.float64, requires_grad=True)
    f2 = torch.randn(2, 3, size, size, generator=gen, dtype=torch.float64, requires_grad=True)
    loss_fn = DenseLocalLoss(region_size=region, num_regions=n_regions, temperature=0.2)
    loss = loss_fn(f1, f2)
    ref = reference_dense(f1, f2, region, n_regions, step, 0.2)
    assert torch.allclose(loss, ref, atol=1e-5, rtol=0)
    grads = torch.autograd.grad(loss, (f1, f2))
    ref_grads = torch.autograd.grad(ref, (f1, f2))
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.allclose(g, r, atol=1e-5, rtol=0)


def test_hand_computed_one_hot_regions() -> None:
    # A 2x2 map whose 4 cells are the 4 unit vectors, the same in both views, T = 1: each anchor
    # has s = 1 with its positive and 0 with the 6 other regions -> log(1 + 6 / e).
    f = torch.eye(4, dtype=torch.float64).reshape(1, 4, 2, 2)
    loss = DenseLocalLoss(region_size=1, num_regions=2, temperature=1.0)(f, f.clone())
    assert loss.item() == pytest.approx(math.log(1 + 6 / math.e))
    # A single region: the positive is the only candidate, the loss is 0.
    one = torch.randn(3, 5, 1, 1, dtype=torch.float64)
    assert DenseLocalLoss(num_regions=1)(one, one).item() == pytest.approx(0.0, abs=1e-12)


def test_is_the_volume_local_loss_without_partitions() -> None:
    gen = torch.Generator().manual_seed(1)
    f1, f2 = torch.randn(2, 3, 4, 7, 7, generator=gen, dtype=torch.float64)
    dense = DenseLocalLoss(reduction="none", chunk_size=2, checkpoint=False)
    local = LocalContrastiveLoss(region_size=1, num_regions=7, reduction="none")
    assert isinstance(dense, LocalContrastiveLoss) and not dense.domain
    assert torch.allclose(dense(f1, f2), local(f1, f2), atol=1e-12, rtol=0)
    assert isinstance(create_loss("dense", num_regions=3), DenseLocalLoss)


def test_bad_arguments_and_shapes() -> None:
    with pytest.raises(ValueError, match="region_size must be a positive integer"):
        DenseLocalLoss(region_size=0)
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        DenseLocalLoss(temperature=0.0)
    loss = DenseLocalLoss()
    with pytest.raises(ValueError, match=r"f1 and f2 must both have shape \(B, C, H, W\)"):
        loss(torch.randn(1, 2, 7, 7), torch.randn(1, 2, 6, 7))
    with pytest.raises(ValueError, match="region grid larger than feature map"):
        loss(torch.randn(1, 2, 5, 5), torch.randn(1, 2, 5, 5))
