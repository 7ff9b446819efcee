"""Instance-classifier aggregators: ``mean``, ``max`` and ``ins``.

Each instance gets class logits from a small classifier; the bag pools them (``pooling``):

* ``"mean_prob"``: the bag's class probabilities are the mean of the instance probabilities
  (the bag logits returned are their logarithm, so ``softmax(logits)`` gives them back). This is
  how the INS paper and its reference code score a bag, and the default of ``ins``.
* ``"mean"``: the mean of the instance logits (with a linear classifier, the classifier of the
  mean-pooled features); the ``mean`` aggregator.
* ``"topk"``: the mean logits of the ``top_k`` instances of highest positive-class probability
  (``top_k=1``: the bag is its most suspicious tile, the MI-Net / max-pooling rule); the ``max``
  aggregator, and an option of ``ins`` (not the paper's bag score).

``ins`` adds a projection head for the instance contrast of INS (Qu et al., "Rethinking Multiple
Instance Learning for Whole Slide Image Classification: A Good Instance Classifier is All You
Need", 2023); it is trained by :mod:`medcl.mil.ins_train` with the rules of
:mod:`medcl.losses.ins`.

Empty bags (no real instance) get the classifier's bias as logits and no instance score, so they
never produce NaN.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medcl.mil.base import (
    AGGREGATORS,
    MILAggregator,
    MILOutput,
    masked_mean,
    mlp_embed,
    positive_probability,
)

Pooling = Literal["mean_prob", "mean", "topk"]
POOLINGS = ("mean_prob", "mean", "topk")


class InstanceOutputs(NamedTuple):
    """Per-instance outputs of :class:`InstanceAggregator`.

    Attributes:
        logits: ``(B, n_classes)`` bag logits.
        instance_logits: ``(B, N, n_classes)`` (0 on padding).
        instance_scores: ``(B, N)`` positive-class probability, 0 on padding.
        embeddings: ``(B, N, proj_dim)`` l2-normalised projections, or ``None`` without a head.
    """

    logits: Tensor
    instance_logits: Tensor
    instance_scores: Tensor
    embeddings: Tensor | None


class InstanceAggregator(MILAggregator):
    """An instance classifier whose instance logits are pooled into bag logits.

    Args:
        in_dim: feature dimension ``D``.
        n_classes: classes (class 0 is the negative class of the positive-class score).
        hidden_dim: width of the ``Linear -> ReLU -> Dropout`` instance embedding.
        dropout: dropout of that embedding.
        pooling: ``"mean_prob"`` (log of the mean instance probabilities), ``"mean"`` of the
            instance logits, or ``"topk"``: mean of the logits of the ``top_k`` instances of
            highest positive-class probability.
        top_k: instances pooled by ``"topk"`` (fewer when the bag is smaller).
        proj_dim: output size of a projection head (``Linear -> ReLU -> Linear``) for the
            instance contrastive loss; 0 for none.

    Shape:
        - features: ``(B, N, D)``, mask: ``(B, N)`` bool
        - output: :class:`~medcl.mil.base.MILOutput` with ``instance_scores`` ``(B, N)`` and
          ``attention=None``
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int = 2,
        hidden_dim: int = 128,
        dropout: float = 0.1,
        pooling: Pooling = "topk",
        top_k: int = 1,
        proj_dim: int = 0,
    ) -> None:
        super().__init__(in_dim, n_classes)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.pooling = pooling
        self.top_k = int(top_k)
        self.embed = mlp_embed(in_dim, hidden_dim, dropout)
        self.classifier = nn.Linear(hidden_dim, n_classes)
        self.projector: nn.Module | None = None
        if proj_dim > 0:
            self.projector = nn.Sequential(
                nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, proj_dim)
            )

    def pool(self, instance_logits: Tensor, scores: Tensor, mask: Tensor) -> Tensor:
        """Bag logits ``(B, C)`` from instance logits ``(B, N, C)`` and scores ``(B, N)``."""
        b, n, c = instance_logits.shape
        bias = self.classifier.bias.expand(b, c)
        if n == 0:
            return bias
        if self.pooling == "mean_prob":
            probs = torch.softmax(instance_logits, dim=-1)
            tiny = torch.finfo(probs.dtype).tiny
            pooled = masked_mean(probs, mask).clamp_min(tiny).log()
        elif self.pooling == "mean":
            pooled = masked_mean(instance_logits, mask)
        else:
            k = min(self.top_k, n)
            ranked = scores.detach().masked_fill(~mask, float("-inf"))
            idx = ranked.topk(k, dim=1).indices  # (B, k)
            chosen = instance_logits.gather(1, idx.unsqueeze(-1).expand(b, k, c))
            pooled = masked_mean(chosen, mask.gather(1, idx))
        return torch.where(mask.any(dim=1, keepdim=True), pooled, bias)

    def forward_instances(self, features: Tensor, mask: Tensor) -> InstanceOutputs:
        """Bag logits plus every per-instance output (used by INS training)."""
        self.check_inputs(features, mask)
        h = self.embed(features)
        inst_logits = self.classifier(h) * mask.unsqueeze(-1)
        scores = positive_probability(inst_logits) * mask
        embeddings = None
        if self.projector is not None:
            embeddings = F.normalize(self.projector(h), dim=-1) * mask.unsqueeze(-1)
        logits = self.pool(inst_logits, scores, mask)
        return InstanceOutputs(logits, inst_logits, scores, embeddings)

    def forward(self, features: Tensor, mask: Tensor) -> MILOutput:
        out = self.forward_instances(features, mask)
        return MILOutput(out.logits, out.instance_scores, None)


@AGGREGATORS.register("mean")
def build_mean(
    in_dim: int, n_classes: int = 2, hidden_dim: int = 128, dropout: float = 0.1
) -> InstanceAggregator:
    """Mean pooling: the bag logits are the mean of the instance logits."""
    return InstanceAggregator(in_dim, n_classes, hidden_dim, dropout, pooling="mean")


@AGGREGATORS.register("max")
def build_max(
    in_dim: int, n_classes: int = 2, hidden_dim: int = 128, dropout: float = 0.1, top_k: int = 1
) -> InstanceAggregator:
    """Max pooling: the bag is classified by its most positive instance (``top_k`` of them)."""
    return InstanceAggregator(in_dim, n_classes, hidden_dim, dropout, pooling="topk", top_k=top_k)


@AGGREGATORS.register("ins")
def build_ins(
    in_dim: int,
    n_classes: int = 2,
    hidden_dim: int = 128,
    dropout: float = 0.1,
    top_k: int = 1,
    proj_dim: int = 128,
    pooling: Pooling = "mean_prob",
) -> InstanceAggregator:
    """INS: the instance classifier with a contrastive projection head.

    The bag score is the mean of the instance probabilities (``pooling="mean_prob"``, the
    paper's); ``"topk"`` / ``"mean"`` are other poolings, not the paper's.
    """
    return InstanceAggregator(
        in_dim, n_classes, hidden_dim, dropout, pooling=pooling, top_k=top_k, proj_dim=proj_dim
    )
