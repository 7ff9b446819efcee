from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from medcl.losses.contrastive import masked_info_nce, ntxent_positive_mask
from medcl.losses.local import LocalContrastiveLoss, pool_regions, region_axis


def reference_local(
    f1: torch.Tensor,
    f2: torch.Tensor,
    starts: list[int],
    region_size: int,
    temperature: float,
    partition: list[int] | None = None,
    volume: list[int] | None = None,
) -> torch.Tensor:
    """Plain loops: slice every region, average its pixels, then loop over anchors.

    ``starts`` are the region start offsets along each axis (the grid is square).
    """
    b = f1.shape[0]
    k = region_size

    def regions(f: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for y in starts:
            for x in starts:
                patch = f[:, y : y + k, x : x + k]
                vec = patch.sum(dim=(1, 2)) / (k * k)
                out.append(vec / vec.norm())
        return out

    emb = [[regions(f1[i]), regions(f2[i])] for i in range(b)]
    r = len(emb[0][0])

    def sim(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.dot(u, w) / temperature

    total = f1.new_zeros(())
    count = 0
    for i in range(b):
        for view in (0, 1):
            for reg in range(r):
                anchor = emb[i][view][reg]
                positives = [emb[i][1 - view][reg]]
                if partition is not None and volume is not None:
                    for j in range(b):
                        if partition[j] == partition[i] and volume[j] != volume[i]:
                            positives += [emb[j][0][reg], emb[j][1][reg]]
                negatives = [
                    emb[i][w][s]
                    for w in (0, 1)
                    for s in range(r)
                    if s != reg  # other regions of the same image, both views
                ]
                den = sum(torch.exp(sim(anchor, c)) for c in positives + negatives)
                li = sum(-torch.log(torch.exp(sim(anchor, p)) / den) for p in positives)
                total = total + li / len(positives)
                count += 1
    return total / count


def _maps(seed: int, b: int = 3, c: int = 4, h: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    f1 = torch.randn(b, c, h, h, generator=g, dtype=torch.float64)
    f2 = f1 + 0.5 * torch.randn(b, c, h, h, generator=g, dtype=torch.float64)
    return f1, f2


def _value_and_grads(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], f1: torch.Tensor, f2: torch.Tensor
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    a1 = f1.clone().requires_grad_(True)
    a2 = f2.clone().requires_grad_(True)
    value = fn(a1, a2)
    return value.detach(), torch.autograd.grad(value, [a1, a2])


@pytest.mark.parametrize("domain", [False, True])
def test_matches_plain_reference(domain: bool) -> None:
    f1, f2 = _maps(0, b=4)
    partition = [0, 1, 0, 0]
    volume = [0, 0, 1, 2]
    p, v = torch.tensor(partition), torch.tensor(volume)
    # 8x8 map, 3 regions of 2 px with stride 3 -> starts 0, 3, 6.
    loss = LocalContrastiveLoss(
        region_size=2, num_regions=3, stride=3, temperature=0.2, domain=domain, chunk_size=3
    )
    ours, g_ours = _value_and_grads(lambda a, b: loss(a, b, p, v), f1, f2)
    ids = (partition, volume) if domain else (None, None)
    ref, g_ref = _value_and_grads(
        lambda a, b: reference_local(a, b, [0, 3, 6], 2, 0.2, *ids), f1, f2
    )
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)
    for go, gr in zip(g_ours, g_ref, strict=True):
        assert torch.allclose(go, gr, atol=1e-5, rtol=0)


def test_default_grid_is_spread_and_centred() -> None:
    # 3 regions of 3 px on 11 px: stride (11 - 3) // 2 = 4, extent 11, start 0.
    assert region_axis(11, 3, 3, None) == (0, 4)
    # On 12 px: stride 4, extent 11, centred start (12 - 11) // 2 = 0.
    assert region_axis(12, 3, 3, None) == (0, 4)
    # On 14 px: stride 5, extent 13, start 0; a fixed stride 4 on 14 px: extent 11, start 1.
    assert region_axis(14, 3, 3, None) == (0, 5)
    assert region_axis(14, 3, 3, 4) == (1, 4)
    assert region_axis(10, 2, 3, 2) == (2, 2)  # extent 6, start (10 - 6) // 2
    assert region_axis(5, 3, 1, None) == (1, 3)
    # Paper setting on a 64 px map: 13 regions of 3 px, stride 5, extent 63.
    assert region_axis(64, 3, 13, None) == (0, 5)


def test_pool_regions_by_hand() -> None:
    # 1 image, 1 channel, 4x4 map 0..15; 2x2 regions, 2 per axis, stride 2.
    f = torch.arange(16, dtype=torch.float64).view(1, 1, 4, 4)
    pooled = pool_regions(f, region_size=2, num_regions=2, stride=2)
    # Means of [[0,1],[4,5]], [[2,3],[6,7]], [[8,9],[12,13]], [[10,11],[14,15]].
    assert pooled.shape == (1, 4, 1)
    assert pooled.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    # Overlapping regions (stride 1 < size 2), 3 per axis.
    pooled = pool_regions(f, region_size=2, num_regions=3, stride=1)
    assert pooled.flatten().tolist() == [2.5, 3.5, 4.5, 6.5, 7.5, 8.5, 10.5, 11.5, 12.5]


def test_hand_computed_single_image() -> None:
    # One image, C = 2, 2x2 map, 1-pixel regions (R = 4), both views equal, T = 1.
    # Pixels (1,0), (0,1), (-1,0), (0,-1). Anchor (1,0) of view 1: positive (1,0) of view 2
    # (cos 1); the other 6 candidates have cosines 0, -1, 0 (view 1) and 0, -1, 0 (view 2):
    #   l = -log(e / (e + 4 + 2/e)) = log(e + 4 + 2/e) - 1, the same for every anchor.
    f = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]], [[0.0, 1.0], [0.0, -1.0]]], dtype=torch.float64)
    f = f.unsqueeze(0)
    loss = LocalContrastiveLoss(region_size=1, num_regions=2, temperature=1.0)(f, f.clone())
    assert loss.item() == pytest.approx(math.log(math.e + 4 + 2 / math.e) - 1, abs=1e-12)


def test_equals_masked_info_nce_per_image() -> None:
    f1, f2 = _maps(1, b=3, h=9)
    loss = LocalContrastiveLoss(region_size=3, num_regions=3, temperature=0.1, reduction="none")
    per_image = loss(f1, f2)
    for i in range(3):
        e1 = pool_regions(f1[i : i + 1], 3, 3)[0]
        e2 = pool_regions(f2[i : i + 1], 3, 3)[0]
        expected = masked_info_nce(torch.cat([e1, e2]), ntxent_positive_mask(9), temperature=0.1)
        assert per_image[i].item() == pytest.approx(expected.item(), abs=1e-12)


@pytest.mark.parametrize("domain", [False, True])
def test_invariant_to_chunk_size_and_checkpointing(domain: bool) -> None:
    f1, f2 = _maps(2, b=5)
    p = torch.tensor([0, 1, 0, 1, 0])
    v = torch.tensor([0, 0, 1, 1, 2])
    results = []
    for chunk in (1, 2, 5, 16):
        for ckpt in (True, False):
            loss = LocalContrastiveLoss(
                region_size=2,
                num_regions=3,
                temperature=0.1,
                domain=domain,
                chunk_size=chunk,
                checkpoint=ckpt,
            )
            results.append(_value_and_grads(partial(loss, partition=p, volume=v), f1, f2))
    value0, grads0 = results[0]
    for value, grads in results[1:]:
        assert value.item() == pytest.approx(value0.item(), abs=1e-12)
        for g, g0 in zip(grads, grads0, strict=True):
            assert torch.allclose(g, g0, atol=1e-12, rtol=0)


def test_domain_without_related_images_equals_plain_loss() -> None:
    f1, f2 = _maps(3, b=4)
    p = torch.tensor([0, 1, 2, 3])
    v = torch.tensor([0, 1, 2, 3])
    plain = LocalContrastiveLoss(region_size=2, num_regions=3, temperature=0.1)(f1, f2)
    dom = LocalContrastiveLoss(region_size=2, num_regions=3, temperature=0.1, domain=True)
    assert dom(f1, f2, p, v).item() == pytest.approx(plain.item(), abs=1e-12)
    # With related images the value changes.
    p_related = torch.tensor([0, 0, 1, 1])
    assert abs(dom(f1, f2, p_related, v).item() - plain.item()) > 1e-3


def test_identical_views_give_lower_loss_than_random_views() -> None:
    g = torch.Generator().manual_seed(4)
    f1 = torch.randn(2, 8, 16, 16, generator=g)
    f_random = torch.randn(2, 8, 16, 16, generator=g)
    loss = LocalContrastiveLoss(region_size=3, num_regions=4, temperature=0.1)
    assert loss(f1, f1.clone()).item() < loss(f1, f_random).item() - 0.5


def test_half_precision_input() -> None:
    f1, f2 = _maps(5, b=2, h=9)
    loss = LocalContrastiveLoss(region_size=3, num_regions=3, temperature=0.1)
    half = loss(f1.to(torch.bfloat16), f2.to(torch.bfloat16))
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(loss(f1, f2).item(), abs=0.05)


def test_errors() -> None:
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        LocalContrastiveLoss(temperature=0.0)
    with pytest.raises(ValueError, match="region_size must be a positive integer"):
        LocalContrastiveLoss(region_size=0)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        LocalContrastiveLoss(chunk_size=0)
    with pytest.raises(ValueError, match="stride must be a positive integer or None"):
        LocalContrastiveLoss(stride=0)
    loss = LocalContrastiveLoss(region_size=3, num_regions=13)
    with pytest.raises(ValueError, match="region grid larger than feature map"):
        loss(torch.randn(1, 2, 10, 10), torch.randn(1, 2, 10, 10))
    with pytest.raises(ValueError, match="region grid larger than feature map"):
        LocalContrastiveLoss(region_size=3, num_regions=3, stride=5)(
            torch.randn(1, 2, 12, 12), torch.randn(1, 2, 12, 12)
        )
    with pytest.raises(ValueError, match=r"f1 and f2 must both have shape \(B, C, H, W\)"):
        loss(torch.randn(1, 2, 64, 64), torch.randn(1, 3, 64, 64))
    domain = LocalContrastiveLoss(region_size=3, num_regions=3, domain=True)
    f = torch.randn(2, 2, 9, 9)
    with pytest.raises(ValueError, match="domain=True needs the partition and volume ids"):
        domain(f, f)
    with pytest.raises(ValueError, match=r"partition and volume must have shape \(2,\)"):
        domain(f, f, torch.zeros(3, dtype=torch.long), torch.zeros(2, dtype=torch.long))


def test_normalised_region_embeddings() -> None:
    f1, _ = _maps(6, b=2, h=9)
    emb = LocalContrastiveLoss(region_size=3, num_regions=3).embed(f1)
    assert emb.shape == (2, 9, 4)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2, 9, dtype=torch.float64))
    expected = F.normalize(F.avg_pool2d(f1, 3).flatten(2).transpose(1, 2), dim=-1)
    assert torch.allclose(emb, expected)
