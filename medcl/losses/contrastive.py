"""One masked InfoNCE loss that serves every contrastive method in medcl.

SimCLR / NT-Xent, the partition losses G^R, G^{D-}, G^D (Chaitanya et al., NeurIPS 2020), SupCon
and the CCI / instance losses differ only in which pairs are positives, which pairs are left out of
the denominator and how positive pairs are weighted. The mathematics is written once here:

* :func:`info_nce_from_logits`: the core on precomputed logits, one row per anchor;
* :func:`masked_info_nce`: cosine similarities of a batch of embeddings, then the core;
* :class:`MaskedInfoNCELoss`: the ``nn.Module`` wrapper;
* :func:`ntxent_positive_mask`: the positives of two views stacked ``[v1; v2]``.

For an anchor ``i`` with positives ``P(i)`` and denominator set ``A(i)`` (every ``a != i`` not
excluded) the loss is the SupCon "L_out" form (Khosla et al., NeurIPS 2020)::

    l_i = -1/|P(i)| * sum_{p in P(i)} w_ip * log( exp(s_ip) / sum_{a in A(i)} exp(s_ia) )

with ``s_ij = cos(z_i, z_j) / T``; with one positive per anchor it is exactly NT-Xent (Chen et al.,
ICML 2020). Anchors without positives are skipped and left out of the mean.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Reduction = Literal["mean", "sum", "none"]
_REDUCTIONS = ("mean", "sum", "none")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float16 / bfloat16 / float32 are computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_temperature(temperature: float) -> None:
    """Raise ``ValueError`` unless ``temperature`` is a positive finite number."""
    if not (isinstance(temperature, int | float) and 0.0 < float(temperature) < float("inf")):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")


def check_reduction(reduction: str) -> None:
    """Raise ``ValueError`` unless ``reduction`` is one of ``mean``, ``sum``, ``none``."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(_REDUCTIONS)}, got {reduction!r}")


def info_nce_from_logits(
    logits: Tensor,
    positives: Tensor,
    denominator: Tensor,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-anchor InfoNCE losses from logits, one row per anchor.

    Args:
        logits: ``(..., A, M)`` scores ``s_ia`` of anchor ``i`` against candidate ``a``.
        positives: ``(..., A, M)`` bool, the positive candidates of each anchor; only those that
            are also in ``denominator`` count.
        denominator: ``(..., A, M)`` bool, the candidates summed in each anchor's denominator.
        weights: optional ``(..., A, M)`` weights ``w_ip`` of the positive terms (default 1).

    Returns:
        ``(losses, has_positive)``: both ``(..., A)``; ``losses`` (float32, or float64 for
        float64 logits) is 0 where the anchor has no positive, ``has_positive`` is bool.
    """
    if positives.shape != logits.shape or denominator.shape != logits.shape:
        raise ValueError(
            f"positives {tuple(positives.shape)} and denominator {tuple(denominator.shape)} "
            f"must have the shape of logits {tuple(logits.shape)}"
        )
    if weights is not None and weights.shape != logits.shape:
        raise ValueError(
            f"weights {tuple(weights.shape)} must have the shape of logits {tuple(logits.shape)}"
        )
    logits = logits.to(_compute_dtype(logits.dtype))
    positives = positives & denominator
    n_pos = positives.sum(dim=-1)
    has_positive = n_pos > 0
    # Rows with an empty denominator have no positive either; give them a full row so that
    # logsumexp stays finite and no NaN leaks into the gradient (their loss is zeroed below).
    empty = ~denominator.any(dim=-1, keepdim=True)
    masked = logits.masked_fill(~(denominator | empty), float("-inf"))
    # torch.logsumexp subtracts the row maximum internally: stable for any temperature.
    log_prob = logits - torch.logsumexp(masked, dim=-1, keepdim=True)
    terms = log_prob if weights is None else log_prob * weights.to(log_prob.dtype)
    summed = torch.where(positives, terms, 0.0).sum(dim=-1)
    losses = -summed / n_pos.clamp(min=1).to(summed.dtype)
    return losses, has_positive


def reduce_anchor_losses(losses: Tensor, has_positive: Tensor, reduction: Reduction) -> Tensor:
    """Mean over the anchors that have a positive, their sum, or the losses unchanged."""
    if reduction == "none":
        return losses
    total = losses.sum()
    if reduction == "sum":
        return total
    # total is 0 (and still attached to the graph) when no anchor has a positive.
    return total / has_positive.sum().clamp(min=1).to(total.dtype)


def cosine_logits(z: Tensor, temperature: float) -> Tensor:
    """``(N, N)`` cosine similarities of the rows of ``z`` divided by ``temperature``."""
    z = F.normalize(z.to(_compute_dtype(z.dtype)), dim=-1)
    return z @ z.transpose(-1, -2) / temperature


def masked_info_nce(
    z: Tensor,
    positives: Tensor,
    *,
    temperature: float,
    exclude: Tensor | None = None,
    weights: Tensor | None = None,
    normalize: bool = True,
    reduction: Reduction = "mean",
) -> Tensor:
    """Masked InfoNCE over a batch of embeddings (SupCon L_out form; NT-Xent with one positive).

    Args:
        z: ``(N, D)`` embeddings, any float dtype (half precision is computed in float32).
        positives: ``(N, N)`` bool, ``positives[i, j]`` if ``j`` is a positive of anchor ``i``.
            The diagonal is ignored.
        temperature: ``T`` in ``s_ij = cos(z_i, z_j) / T``; must be > 0.
        exclude: optional ``(N, N)`` bool; excluded pairs are neither negatives nor positives.
        weights: optional ``(N, N)`` weights ``w_ip`` of the positive terms.
        normalize: l2-normalise ``z`` (cosine similarity); False uses raw dot products.
        reduction: ``"mean"`` over the anchors that have a positive (0 if none has),
            ``"sum"``, or ``"none"`` for the ``(N,)`` per-anchor losses (0 for skipped anchors).

    Returns:
        The loss: a scalar, or ``(N,)`` for ``reduction="none"``.
    """
    check_temperature(temperature)
    check_reduction(reduction)
    if z.ndim != 2:
        raise ValueError(f"z must have shape (N, D), got {tuple(z.shape)}")
    n = z.shape[0]
    for name, mask in (("positives", positives), ("exclude", exclude), ("weights", weights)):
        if mask is not None and tuple(mask.shape) != (n, n):
            raise ValueError(f"{name} must have shape ({n}, {n}) for z of shape {tuple(z.shape)}")
    if positives.dtype != torch.bool or (exclude is not None and exclude.dtype != torch.bool):
        raise ValueError("positives and exclude must be bool tensors")
    if normalize:
        logits = cosine_logits(z, temperature)
    else:
        zc = z.to(_compute_dtype(z.dtype))
        logits = zc @ zc.T / temperature
    denominator = ~torch.eye(n, dtype=torch.bool, device=z.device)
    if exclude is not None:
        denominator = denominator & ~exclude
    losses, has_positive = info_nce_from_logits(logits, positives, denominator, weights)
    return reduce_anchor_losses(losses, has_positive, reduction)


def ntxent_positive_mask(n_images: int, device: torch.device | str | None = None) -> Tensor:
    """``(2n, 2n)`` bool positives of two views stacked ``[v1; v2]``: ``i`` pairs with ``i ± n``."""
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    idx = torch.arange(2 * n_images, device=device)
    return (idx[:, None] - idx[None, :]).abs() == n_images


class MaskedInfoNCELoss(nn.Module):
    """Masked InfoNCE (SupCon L_out form; NT-Xent with one positive per anchor).

    Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020; Chen et al., "A Simple
    Framework for Contrastive Learning of Visual Representations", ICML 2020.

    Args:
        temperature: ``T`` scaling the cosine similarities; must be > 0.
        normalize: l2-normalise the embeddings first (cosine similarity).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (see :func:`masked_info_nce`).

    Shape:
        - z: ``(N, D)``
        - positives, exclude: ``(N, N)`` bool; weights: ``(N, N)`` float
        - output: scalar, or ``(N,)`` with ``reduction="none"``
    """

    def __init__(
        self, temperature: float = 0.1, normalize: bool = True, reduction: Reduction = "mean"
    ) -> None:
        super().__init__()
        check_temperature(temperature)
        check_reduction(reduction)
        self.temperature = float(temperature)
        self.normalize = normalize
        self.reduction: Reduction = reduction

    def forward(
        self,
        z: Tensor,
        positives: Tensor,
        exclude: Tensor | None = None,
        weights: Tensor | None = None,
    ) -> Tensor:
        return masked_info_nce(
            z,
            positives,
            temperature=self.temperature,
            exclude=exclude,
            weights=weights,
            normalize=self.normalize,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, reduction={self.reduction!r}"
