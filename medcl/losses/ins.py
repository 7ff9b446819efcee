"""The instance-level losses of INS: prototype pseudo-labels, instance classification, instance
contrast.

Qu et al., "Rethinking Multiple Instance Learning for Whole Slide Image Classification: A Good
Instance Classifier is All You Need", 2023. Only bag labels are known; instances get
pseudo-labels:

* every instance of a negative bag (label 0) is negative;
* an instance of a positive bag of class ``c`` is labelled ``c`` when its projected embedding is
  closer (cosine) to the class-``c`` prototype than to the negative prototype *and* its
  positive-class score reaches ``threshold``; otherwise it is labelled 0. The top-scoring
  instance of a positive bag is always ``c`` (a positive bag holds at least one positive);
* during warm-up (no prototypes yet) the rule is ``"top"``: only that top instance is labelled
  and the other instances of positive bags are ignored (``-1``); these confident labels feed the
  contrastive loss and the prototypes. The warm-up classification loss uses ``"inherit"``: every
  instance of a positive bag takes the bag's class. Its balanced cross-entropy then ranks the
  instances that only positive bags hold (the witnesses) highest, which bootstraps the
  classifier where max pooling alone can lock onto the wrong instances.

The prototypes are momentum averages of the l2-normalised embeddings of each pseudo-class
(:func:`update_prototypes`). The pseudo-labels then drive a cross-entropy on the instance logits
(:class:`InstanceClassificationLoss`) and a supervised contrastive loss with the pseudo-labels as
classes (:class:`InstanceContrastiveLoss`, on :func:`medcl.losses.contrastive.masked_info_nce`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medcl.losses.contrastive import check_temperature, masked_info_nce

PseudoLabelMode = Literal["prototype", "top", "inherit"]


@torch.no_grad()
def ins_pseudo_labels(
    instance_scores: Tensor,
    mask: Tensor,
    bag_labels: Tensor,
    embeddings: Tensor | None = None,
    prototypes: Tensor | None = None,
    threshold: float = 0.5,
    mode: PseudoLabelMode = "prototype",
) -> Tensor:
    """Instance pseudo-labels from bag labels, scores and prototypes (rules in the module doc).

    Args:
        instance_scores: ``(B, N)`` positive-class probability of each instance.
        mask: ``(B, N)`` bool, ``True`` on real instances.
        bag_labels: ``(B,)`` int64 bag classes (0 = negative).
        embeddings: ``(B, N, E)`` instance embeddings (normalised inside); needed by
            ``"prototype"``.
        prototypes: ``(C, E)`` class prototypes; ``"prototype"`` without them acts as ``"top"``.
        threshold: score an instance of a positive bag needs to be labelled positive.
        mode: ``"prototype"``, ``"top"`` or ``"inherit"`` (see the module doc).

    Returns:
        ``(B, N)`` int64: the class of each instance, ``-1`` on padding and ignored instances.
    """
    if mode not in ("prototype", "top", "inherit"):
        raise ValueError(f"mode must be 'prototype', 'top' or 'inherit', got {mode!r}")
    b, n = instance_scores.shape
    labels = torch.full((b, n), -1, dtype=torch.int64, device=instance_scores.device)
    if n == 0:
        return labels
    bag = bag_labels.to(torch.int64).view(b, 1).expand(b, n)
    negative_bag = bag == 0
    labels[negative_bag & mask] = 0
    if mode == "inherit":
        labels[mask] = bag[mask]
        return labels
    if mode == "prototype" and prototypes is not None and embeddings is not None:
        z = F.normalize(embeddings.to(prototypes.dtype), dim=-1)
        protos = F.normalize(prototypes, dim=-1)
        sim = z @ protos.T  # (B, N, C)
        own = sim.gather(-1, bag.unsqueeze(-1)).squeeze(-1)
        closer = own > sim[..., 0]
        positive = closer & (instance_scores >= threshold)
        in_positive = ~negative_bag & mask
        labels[in_positive] = torch.where(positive, bag, torch.zeros_like(bag))[in_positive]
    top = instance_scores.masked_fill(~mask, float("-inf")).argmax(dim=1)
    rows = torch.arange(b, device=labels.device)
    has_real = mask.any(dim=1) & (bag_labels != 0)
    labels[rows[has_real], top[has_real]] = bag_labels.to(torch.int64)[has_real]
    return labels


@torch.no_grad()
def update_prototypes(
    prototypes: Tensor | None, embeddings: Tensor, labels: Tensor, n_classes: int, momentum: float
) -> Tensor | None:
    """Momentum update ``p_c <- normalize(m p_c + (1 - m) mean_{label=c} normalize(z))``.

    Args:
        prototypes: ``(C, E)`` current prototypes, or ``None`` (the first update sets each class
            that has instances to its mean; classes without instances stay 0).
        embeddings: ``(B, N, E)`` (or ``(M, E)``) instance embeddings.
        labels: ``(B, N)`` (or ``(M,)``) pseudo-labels, ``-1`` ignored.
        n_classes: ``C``.
        momentum: ``m`` in ``[0, 1)``.

    Returns:
        ``(C, E)`` prototypes, or ``None`` when there is nothing to start from.
    """
    z = F.normalize(embeddings.reshape(-1, embeddings.shape[-1]).float(), dim=-1)
    lab = labels.reshape(-1)
    out = None if prototypes is None else prototypes.clone()
    for c in range(n_classes):
        members = lab == c
        if not members.any():
            continue
        mean = z[members].mean(dim=0)
        if out is None:
            out = torch.zeros(n_classes, z.shape[-1], dtype=z.dtype, device=z.device)
        if out[c].abs().sum() == 0:
            out[c] = F.normalize(mean, dim=0)
        else:
            out[c] = F.normalize(momentum * out[c] + (1.0 - momentum) * mean, dim=0)
    return out


class InstanceClassificationLoss(nn.Module):
    """Cross-entropy of instance logits against pseudo-labels; ``-1`` labels are ignored.

    Args:
        balanced: average the per-class mean losses (each pseudo-class counts equally, so the
            many negative tiles do not drown the few positive ones); ``False`` averages over all
            labelled instances.

    Shape:
        - instance_logits: ``(B, N, C)``
        - pseudo_labels: ``(B, N)`` int64, ``-1`` for padding / ignored
        - output: scalar (0, attached to the graph, when no instance is labelled)
    """

    def __init__(self, balanced: bool = True) -> None:
        super().__init__()
        self.balanced = balanced

    def forward(self, instance_logits: Tensor, pseudo_labels: Tensor) -> Tensor:
        if instance_logits.shape[:-1] != pseudo_labels.shape:
            raise ValueError(
                f"instance_logits {tuple(instance_logits.shape)} and pseudo_labels "
                f"{tuple(pseudo_labels.shape)} do not match"
            )
        logits = instance_logits.reshape(-1, instance_logits.shape[-1])
        labels = pseudo_labels.reshape(-1)
        keep = labels >= 0
        if not keep.any():
            return logits.sum() * 0.0
        losses = F.cross_entropy(logits[keep], labels[keep], reduction="none")
        if not self.balanced:
            return losses.mean()
        kept = labels[keep]
        per_class = [losses[kept == c].mean() for c in torch.unique(kept)]
        return torch.stack(per_class).mean()


class InstanceContrastiveLoss(nn.Module):
    """Supervised contrastive loss over instances with pseudo-labels as classes (INS).

    Instances of the same pseudo-class (over the whole batch of bags) are positives of each
    other; all other labelled instances are negatives; ``-1`` instances are left out. Uses
    :func:`~medcl.losses.contrastive.masked_info_nce` (SupCon ``L_out``; Khosla et al. 2020).

    Args:
        temperature: softmax temperature (> 0).
        max_instances: cap on the instances used (the ``M x M`` similarity matrix); every
            instance with a non-zero pseudo-label is kept first, the rest is a random sample of
            class-0 instances. ``0``: no cap.

    Shape:
        - embeddings: ``(B, N, E)``
        - pseudo_labels: ``(B, N)`` int64, ``-1`` for padding / ignored
        - output: scalar (0 when no instance has a positive)
    """

    def __init__(self, temperature: float = 0.1, max_instances: int = 1024) -> None:
        super().__init__()
        check_temperature(temperature)
        if max_instances < 0:
            raise ValueError(f"max_instances must be >= 0, got {max_instances}")
        self.temperature = float(temperature)
        self.max_instances = int(max_instances)

    def select(self, labels: Tensor) -> Tensor:
        """Indices (into the flattened instances) used by the loss."""
        idx = torch.nonzero(labels >= 0).squeeze(-1)
        if self.max_instances == 0 or len(idx) <= self.max_instances:
            return idx
        positive = idx[labels[idx] > 0][: self.max_instances]
        negative = idx[labels[idx] == 0]
        room = self.max_instances - len(positive)
        picked = negative[torch.randperm(len(negative), device=negative.device)[:room]]
        return torch.sort(torch.cat([positive, picked])).values

    def forward(self, embeddings: Tensor, pseudo_labels: Tensor) -> Tensor:
        if embeddings.shape[:-1] != pseudo_labels.shape:
            raise ValueError(
                f"embeddings {tuple(embeddings.shape)} and pseudo_labels "
                f"{tuple(pseudo_labels.shape)} do not match"
            )
        z = embeddings.reshape(-1, embeddings.shape[-1])
        labels = pseudo_labels.reshape(-1)
        idx = self.select(labels)
        if len(idx) < 2:
            return z.sum() * 0.0
        lab = labels[idx]
        positives = lab[:, None] == lab[None, :]
        return masked_info_nce(z[idx], positives, temperature=self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, max_instances={self.max_instances}"
