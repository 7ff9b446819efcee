"""What every MIL aggregator shares: its output, its base class, masking helpers, the registry.

Shapes: ``features (B, N, D)`` padded bags, ``mask (B, N)`` bool with ``True`` on real instances.
Every aggregator ignores padded positions completely, so a bag gives the same output alone and
padded inside a batch, and a bag without any real instance gives finite outputs (documented per
aggregator; in general the logits are a learned bias).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from medcl.registry import Registry

AGGREGATORS: Registry[MILAggregator] = Registry("MIL aggregator")


class MILOutput(NamedTuple):
    """What an aggregator returns.

    Attributes:
        logits: ``(B, n_classes)`` bag logits.
        instance_scores: ``(B, N)`` positive-class probability of each instance (for more than
            two classes: ``1 - p(class 0)``), 0 on padding; ``None`` for attention models.
        attention: ``(B, N)`` attention weights summing to 1 over a bag's real instances, 0 on
            padding (all 0 for an empty bag); ``None`` for instance-score models.
    """

    logits: Tensor
    instance_scores: Tensor | None
    attention: Tensor | None


class MILAggregator(nn.Module):
    """Base of the aggregators: records ``in_dim``, ``n_classes`` and checks inputs."""

    def __init__(self, in_dim: int, n_classes: int) -> None:
        super().__init__()
        if in_dim < 1:
            raise ValueError(f"in_dim must be >= 1, got {in_dim}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        self.in_dim = int(in_dim)
        self.n_classes = int(n_classes)

    def check_inputs(self, features: Tensor, mask: Tensor) -> None:
        """Raise ``ValueError`` unless ``features (B, N, in_dim)`` and ``mask (B, N)`` bool."""
        if features.ndim != 3 or features.shape[-1] != self.in_dim:
            raise ValueError(f"features must be (B, N, {self.in_dim}), got {tuple(features.shape)}")
        if mask.dtype != torch.bool or tuple(mask.shape) != tuple(features.shape[:2]):
            raise ValueError(
                f"mask must be bool (B, N) = {tuple(features.shape[:2])}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )

    def forward(self, features: Tensor, mask: Tensor) -> MILOutput:  # pragma: no cover
        raise NotImplementedError


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Softmax of ``scores`` over ``dim`` restricted to ``mask``.

    Masked entries get exactly 0, real entries sum to 1; a row without any real entry is all 0
    (no NaN, in the value or the gradient).
    """
    if scores.shape[dim] == 0:
        return scores.clone()
    filled = scores.masked_fill(~mask, float("-inf"))
    top = filled.amax(dim=dim, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top)).detach()
    expo = torch.exp(filled - top)
    return expo / expo.sum(dim=dim, keepdim=True).clamp_min(torch.finfo(expo.dtype).tiny)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values (B, N, D)`` over the real instances of ``mask (B, N)``: ``(B, D)``.

    An empty bag gives a zero vector.
    """
    weights = mask.to(values.dtype).unsqueeze(-1)
    return (values * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def positive_probability(logits: Tensor) -> Tensor:
    """Positive-class probability ``1 - softmax(logits)[..., 0]`` (``p(class 1)`` for 2 classes)."""
    return 1.0 - torch.softmax(logits, dim=-1)[..., 0]


def mlp_embed(in_dim: int, hidden_dim: int, dropout: float) -> nn.Sequential:
    """The per-instance feature reduction ``Linear -> ReLU -> Dropout`` used by every model."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))


def aggregator_spec(model: nn.Module) -> dict[str, Any]:
    """``{"name", "kwargs"}`` recorded on a model by ``create_aggregator``."""
    return {
        "name": getattr(model, "aggregator_name", None),
        "kwargs": dict(getattr(model, "aggregator_kwargs", {}) or {}),
    }
