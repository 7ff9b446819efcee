from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from medcl.losses.contrastive import (
    MaskedInfoNCELoss,
    info_nce_from_logits,
    masked_info_nce,
    ntxent_positive_mask,
)


def reference_info_nce(
    z: torch.Tensor,
    positives: torch.Tensor,
    temperature: float,
    exclude: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain loops over anchors: -1/|P| sum_p w_ip log(exp(s_ip) / sum_a exp(s_ia))."""
    n = z.shape[0]
    total = z.new_zeros(())
    count = 0
    for i in range(n):
        denominator = [
            a for a in range(n) if a != i and not (exclude is not None and exclude[i, a])
        ]
        pos = [p for p in denominator if positives[i, p]]
        if not pos:
            continue

        def sim(i: int, j: int) -> torch.Tensor:
            return torch.dot(z[i], z[j]) / (z[i].norm() * z[j].norm()) / temperature

        den = sum(torch.exp(sim(i, a)) for a in denominator)
        li = z.new_zeros(())
        for p in pos:
            w = 1.0 if weights is None else weights[i, p]
            li = li - w * torch.log(torch.exp(sim(i, p)) / den)
        total = total + li / len(pos)
        count += 1
    return total / max(count, 1)


def _grads(
    fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    z = z.clone().requires_grad_(True)
    value = fn(z)
    (grad,) = torch.autograd.grad(value, z)
    return value.detach(), grad


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_plain_reference_with_masks_and_weights(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n, d, t = 7, 5, 0.3
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    positives = torch.rand(n, n, generator=g) < 0.3
    exclude = torch.rand(n, n, generator=g) < 0.2
    weights = torch.rand(n, n, generator=g, dtype=torch.float64) + 0.5
    ours, g_ours = _grads(
        lambda x: masked_info_nce(x, positives, temperature=t, exclude=exclude, weights=weights),
        z,
    )
    ref, g_ref = _grads(lambda x: reference_info_nce(x, positives, t, exclude, weights), z)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)
    assert torch.allclose(g_ours, g_ref, atol=1e-5, rtol=0)


def test_ntxent_equals_cross_entropy_form() -> None:
    # With one positive per anchor the loss is NT-Xent: cross entropy of the similarity row
    # (self removed) against the index of the other view.
    g = torch.Generator().manual_seed(3)
    b, t = 4, 0.1
    z = torch.randn(2 * b, 6, generator=g, dtype=torch.float64)

    def ce(x: torch.Tensor) -> torch.Tensor:
        zn = F.normalize(x, dim=1)
        logits = zn @ zn.T / t
        logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool), float("-inf"))
        target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
        return F.cross_entropy(logits, target)

    ours, g_ours = _grads(lambda x: masked_info_nce(x, ntxent_positive_mask(b), temperature=t), z)
    ref, g_ref = _grads(ce, z)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)
    assert torch.allclose(g_ours, g_ref, atol=1e-5, rtol=0)


def test_hand_computed_two_images() -> None:
    # Views stacked [a, b, a', b'] = [(1,0), (0,1), (1,0), (0,1)], T = 1.
    # Anchor a: positive a' (cos 1); denominator b (cos 0), a' (cos 1), b' (cos 0):
    #   l_a = -log(e / (e + 2)) = log(1 + 2/e); every anchor is alike by symmetry.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    loss = masked_info_nce(z, ntxent_positive_mask(2), temperature=1.0)
    assert loss.item() == pytest.approx(math.log(1 + 2 / math.e), abs=1e-12)
    # Excluding the other image's second view (b' for a, a' for b, ...) leaves one 1 in the
    # denominator: l = log(1 + 1/e).
    exclude = torch.zeros(4, 4, dtype=torch.bool)
    for i, j in [(0, 3), (1, 2), (2, 1), (3, 0)]:
        exclude[i, j] = True
    loss = masked_info_nce(z, ntxent_positive_mask(2), temperature=1.0, exclude=exclude)
    assert loss.item() == pytest.approx(math.log(1 + 1 / math.e), abs=1e-12)


def test_ntxent_positive_mask_pairs_views() -> None:
    expected = torch.tensor(
        [
            [0, 0, 1, 0],
            [0, 0, 0, 1],
            [1, 0, 0, 0],
            [0, 1, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(ntxent_positive_mask(2), expected)
    with pytest.raises(ValueError, match="n_images"):
        ntxent_positive_mask(0)


def test_diagonal_and_excluded_positives_are_ignored() -> None:
    g = torch.Generator().manual_seed(4)
    z = torch.randn(6, 3, generator=g, dtype=torch.float64)
    positives = ntxent_positive_mask(3)
    with_diag = positives | torch.eye(6, dtype=torch.bool)
    base = masked_info_nce(z, positives, temperature=0.5)
    assert torch.allclose(masked_info_nce(z, with_diag, temperature=0.5), base)
    # An excluded positive is no positive: anchor 0 loses its only positive and is skipped.
    exclude = torch.zeros(6, 6, dtype=torch.bool)
    exclude[0, 3] = True
    per_anchor = masked_info_nce(z, positives, temperature=0.5, exclude=exclude, reduction="none")
    assert per_anchor[0].item() == 0.0
    mean = masked_info_nce(z, positives, temperature=0.5, exclude=exclude)
    assert mean.item() == pytest.approx(per_anchor[1:].sum().item() / 5, abs=1e-12)


def test_anchors_without_positives_are_counted_out_of_the_mean() -> None:
    g = torch.Generator().manual_seed(5)
    z = torch.randn(5, 4, generator=g, dtype=torch.float64)
    positives = torch.zeros(5, 5, dtype=torch.bool)
    positives[2, 4] = True
    none = masked_info_nce(z, positives, temperature=0.2, reduction="none")
    assert torch.count_nonzero(none) == 1
    assert masked_info_nce(z, positives, temperature=0.2).item() == pytest.approx(
        none[2].item(), abs=1e-12
    )
    assert masked_info_nce(z, positives, temperature=0.2, reduction="sum").item() == (
        pytest.approx(none[2].item(), abs=1e-12)
    )
    # No positive at all: loss 0, and backward still works (zero gradient, no NaN).
    zr = z.clone().requires_grad_(True)
    empty = masked_info_nce(zr, torch.zeros(5, 5, dtype=torch.bool), temperature=0.2)
    (grad,) = torch.autograd.grad(empty, zr)
    assert empty.item() == 0.0 and torch.count_nonzero(grad) == 0


def test_empty_denominator_row_gives_no_nan() -> None:
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    exclude = torch.zeros(4, 4, dtype=torch.bool)
    exclude[1] = True  # anchor 1 has nothing in its denominator
    loss = masked_info_nce(z, ntxent_positive_mask(2), temperature=0.1, exclude=exclude)
    (grad,) = torch.autograd.grad(loss, z)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_stable_at_tiny_temperature() -> None:
    z = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    loss = masked_info_nce(z, ntxent_positive_mask(4), temperature=1e-4)
    (grad,) = torch.autograd.grad(loss, z)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    z32 = z.detach().float()
    assert torch.isfinite(masked_info_nce(z32, ntxent_positive_mask(4), temperature=1e-4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_computed_in_float32(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(6)
    z = torch.randn(8, 16, generator=g)
    positives = ntxent_positive_mask(4)
    loss = masked_info_nce(z.to(dtype), positives, temperature=0.1)
    assert loss.dtype == torch.float32
    expected = masked_info_nce(z.to(dtype).float(), positives, temperature=0.1)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_module_wrapper_and_unnormalised_mode() -> None:
    g = torch.Generator().manual_seed(7)
    z = torch.randn(6, 3, generator=g, dtype=torch.float64)
    positives = ntxent_positive_mask(3)
    module = MaskedInfoNCELoss(temperature=0.4)
    assert torch.equal(module(z, positives), masked_info_nce(z, positives, temperature=0.4))
    # normalize=False uses raw dot products: same as normalising beforehand.
    zn = F.normalize(z, dim=1)
    raw = masked_info_nce(zn, positives, temperature=0.4, normalize=False)
    assert raw.item() == pytest.approx(module(z, positives).item(), abs=1e-12)
    assert "temperature=0.4" in repr(module)


def test_info_nce_from_logits_batched_rows() -> None:
    # Leading batch dimensions are rows of independent anchors.
    logits = torch.tensor([[[0.0, 1.0, 2.0]], [[3.0, 0.0, 0.0]]], dtype=torch.float64)
    pos = torch.tensor([[[False, True, False]], [[True, False, False]]])
    den = torch.ones_like(pos)
    losses, has = info_nce_from_logits(logits, pos, den)
    lse0 = math.log(1 + math.e + math.e**2)
    lse1 = math.log(math.e**3 + 2)
    assert losses[0, 0].item() == pytest.approx(lse0 - 1.0, abs=1e-12)
    assert losses[1, 0].item() == pytest.approx(lse1 - 3.0, abs=1e-12)
    assert has.all()


@pytest.mark.parametrize("temperature", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_temperature_raises(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        MaskedInfoNCELoss(temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        masked_info_nce(torch.randn(4, 2), ntxent_positive_mask(2), temperature=temperature)


def test_bad_shapes_and_options_raise() -> None:
    z = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"positives must have shape \(4, 4\)"):
        masked_info_nce(z, ntxent_positive_mask(3), temperature=0.1)
    with pytest.raises(ValueError, match=r"exclude must have shape \(4, 4\)"):
        masked_info_nce(
            z, ntxent_positive_mask(2), temperature=0.1, exclude=torch.zeros(3, 3, dtype=torch.bool)
        )
    with pytest.raises(ValueError, match=r"z must have shape \(N, D\)"):
        masked_info_nce(torch.randn(4), ntxent_positive_mask(2), temperature=0.1)
    with pytest.raises(ValueError, match="bool"):
        masked_info_nce(z, ntxent_positive_mask(2).float(), temperature=0.1)
    with pytest.raises(ValueError, match="reduction must be one of"):
        MaskedInfoNCELoss(reduction="max")  # type: ignore[arg-type]
