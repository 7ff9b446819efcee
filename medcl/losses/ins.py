"""The instance-level rules and losses of INS, following PiCO's partial-label learning.

Qu et al., "Rethinking Multiple Instance Learning for Whole Slide Image Classification: A Good
Instance Classifier is All You Need", IEEE TCSVT 2024 (arXiv 2307.02249), whose pseudo-labelling
follows PiCO (Wang et al., "PiCO: Contrastive Label Disambiguation for Partial Label Learning",
ICLR 2022). Only bag labels are known, so each instance gets a *candidate set* of classes:

* an instance of a negative bag (label 0) can only be class 0: candidates ``{0}``;
* an instance of a positive bag of class ``c`` is either negative or ``c``: candidates ``{0, c}``.

Every training instance keeps a soft *confidence* vector over the classes (``(M, C)`` for the
``M`` training instances, stored for the whole data set). It starts uniform over the candidates
(:func:`initial_confidence`) and, after the warm-up, is moved every step by a moving average
towards the one-hot of the candidate its embedding is closest to among the class prototypes
(:func:`prototype_pseudo_labels`, :func:`update_confidence`); the average's coefficient ``phi``
falls linearly over training (:func:`confidence_momentum`, 0.95 -> 0.8 as PiCO / INS). The
instance classifier is trained with the confidence-weighted cross-entropy
(:class:`PartialLabelLoss`). The prototypes are momentum averages of the projected embeddings,
one instance at a time in batch order, of the class the *classifier* predicts among the
candidates (:func:`classifier_pseudo_labels`, :func:`update_prototypes`). The instance contrast
(:class:`INSContrastiveLoss`) is MoCo during the warm-up and SupCon afterwards, with the
classifier's pseudo-labels as classes, over the queries, their momentum keys and a queue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medcl.losses.contrastive import check_temperature, info_nce_from_logits


def candidate_sets(bag_labels: Tensor, n_classes: int) -> Tensor:
    """The candidate classes of each instance from its bag's label.

    Args:
        bag_labels: ``(M,)`` int64, the label of the bag each instance comes from.
        n_classes: ``C`` (at least 2; class 0 is the negative class).

    Returns:
        ``(M, C)`` float32 0/1: ``e_0`` for a negative bag, ``e_0 + e_c`` for a bag of class
        ``c > 0``.
    """
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    labels = bag_labels.to(torch.int64).reshape(-1)
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        found = labels.unique().tolist()
        raise ValueError(f"bag labels must be in 0..{n_classes - 1}, got {found}")
    cand = F.one_hot(labels, n_classes).to(torch.float32)
    cand[:, 0] = 1.0
    return cand


def initial_confidence(candidates: Tensor) -> Tensor:
    """PiCO's start: uniform over each instance's candidates, ``(M, C)`` rows summing to 1."""
    return candidates / candidates.sum(dim=1, keepdim=True).clamp_min(1.0)


def confidence_momentum(epoch: int, epochs: int, start: float = 0.95, end: float = 0.8) -> float:
    """``phi`` used during ``epoch`` (0-based) of ``epochs``.

    PiCO and the INS reference set ``phi = start + (end - start) * e / epochs`` at the end of
    epoch ``e``, so epoch ``epoch >= 1`` trains with the value of ``e = epoch - 1`` (epoch 0, a
    warm-up epoch in INS, uses ``start``).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    e = max(epoch - 1, 0)
    return float(start + (end - start) * e / epochs)


@torch.no_grad()
def classifier_pseudo_labels(logits: Tensor, candidates: Tensor) -> Tensor:
    """``argmax_c softmax(logits)_c * candidates_c``: the classifier's class among the candidates.

    Shapes: ``logits (M, C)``, ``candidates (M, C)`` -> ``(M,)`` int64.
    """
    return (torch.softmax(logits.float(), dim=-1) * candidates).argmax(dim=-1)


@torch.no_grad()
def prototype_pseudo_labels(embeddings: Tensor, prototypes: Tensor, candidates: Tensor) -> Tensor:
    """The candidate class whose prototype is most similar: ``argmax softmax(z P^T) * cand``.

    Shapes: ``embeddings (M, E)`` (l2-normalised), ``prototypes (C, E)``, ``candidates (M, C)``
    -> ``(M,)`` int64.
    """
    scores = torch.softmax(embeddings.float() @ prototypes.float().T, dim=-1)
    return (scores * candidates).argmax(dim=-1)


@torch.no_grad()
def update_confidence(confidence: Tensor, pseudo_labels: Tensor, momentum: float) -> Tensor:
    """``phi * confidence + (1 - phi) * onehot(pseudo_labels)``.

    Shapes: ``confidence (M, C)``, ``pseudo_labels (M,)`` -> ``(M, C)`` (a new tensor). A row
    whose pseudo-label is always among its candidates stays a distribution over the candidates.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    target = F.one_hot(pseudo_labels.to(torch.int64), confidence.shape[1]).to(confidence.dtype)
    return momentum * confidence + (1.0 - momentum) * target


@torch.no_grad()
def update_prototypes(
    prototypes: Tensor, embeddings: Tensor, labels: Tensor, momentum: float
) -> Tensor:
    """Per-instance momentum updates ``p_y <- m p_y + (1 - m) z`` in batch order, then l2-norm.

    The sequential updates of a class with members ``z_1..z_k`` (in order) sum in closed form to
    ``m^k p + (1 - m) sum_j m^(k - j) z_j``, computed here without a Python loop over instances.
    Rows of classes without members are only re-normalised (a zero row stays zero).

    Shapes: ``prototypes (C, E)``, ``embeddings (M, E)``, ``labels (M,)`` -> ``(C, E)``.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    z = embeddings.detach().to(prototypes.dtype)
    lab = labels.to(torch.int64)
    n_classes = prototypes.shape[0]
    onehot = F.one_hot(lab, n_classes).to(z.dtype)  # (M, C)
    count = onehot.sum(dim=0)  # (C,)
    # rank of each member among the later members of its class: k - j for member j of k
    later = onehot.flip(0).cumsum(0).flip(0) - onehot  # members after each row, per class
    after = (later * onehot).sum(dim=1)  # (M,)
    weights = (1.0 - momentum) * torch.pow(torch.full_like(after, momentum), after)
    added = (onehot * weights[:, None]).T @ z  # (C, E)
    out = torch.pow(torch.full_like(count, momentum), count)[:, None] * prototypes + added
    return F.normalize(out, dim=1)


class PartialLabelLoss(nn.Module):
    """PiCO's classification loss: cross-entropy against the soft confidences.

    ``loss = -mean_i sum_c confidence_ic * log softmax(logits_i)_c``.

    Shape:
        - logits: ``(M, C)``
        - confidence: ``(M, C)`` rows summing to 1
        - output: scalar
    """

    def forward(self, logits: Tensor, confidence: Tensor) -> Tensor:
        if logits.shape != confidence.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)} and confidence {tuple(confidence.shape)} differ"
            )
        if logits.shape[0] == 0:
            return logits.sum() * 0.0
        log_p = F.log_softmax(logits.float(), dim=-1)
        return -(confidence.to(log_p.dtype) * log_p).sum(dim=-1).mean()


class INSContrastiveLoss(nn.Module):
    """The instance contrast of INS: MoCo in the warm-up, SupCon on pseudo-labels afterwards.

    Anchors are the queries ``q``; the candidates are ``[q; k; queue]`` (the queries, their
    momentum-encoder keys in the same order, and a queue of earlier keys).

    * ``labels is None`` (warm-up, MoCo; He et al. 2020): the one positive of ``q_i`` is ``k_i``,
      the denominator is ``k`` and the queue (the other queries are not in it).
    * with labels (SupCon ``L_out``; Khosla et al. 2020): the positives of ``q_i`` are every
      candidate with its pseudo-label (including ``k_i``), the denominator every candidate but
      ``q_i`` itself.

    Embeddings are l2-normalised by the caller; similarities are dot products over
    ``temperature``.

    Shape:
        - q: ``(B, E)``, k: ``(B, E)``, queue: ``(Q, E)`` (Q may be 0)
        - labels: ``(B,)`` int64 (shared by ``q`` and ``k``), queue_labels: ``(Q,)`` int64
        - output: scalar
    """

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        check_temperature(temperature)
        self.temperature = float(temperature)

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        queue: Tensor,
        labels: Tensor | None = None,
        queue_labels: Tensor | None = None,
    ) -> Tensor:
        if q.shape != k.shape or q.ndim != 2 or queue.ndim != 2 or queue.shape[1] != q.shape[1]:
            raise ValueError(
                f"q {tuple(q.shape)}, k {tuple(k.shape)} and queue {tuple(queue.shape)} must be "
                "(B, E), (B, E) and (Q, E)"
            )
        b = q.shape[0]
        if b == 0:
            return q.sum() * 0.0
        cands = torch.cat([q, k.detach(), queue.detach().to(q.dtype)], dim=0)
        logits = q.float() @ cands.float().T / self.temperature  # (B, 2B + Q)
        n = cands.shape[0]
        col = torch.arange(n, device=q.device)
        row = torch.arange(b, device=q.device)
        if labels is None:
            positives = col[None, :] == (row[:, None] + b)
            denominator = (col >= b)[None, :].expand(b, n)
        else:
            if queue_labels is None or len(queue_labels) != len(queue):
                raise ValueError("SupCon needs one label per queue entry")
            all_labels = torch.cat([labels, labels, queue_labels]).to(torch.int64)
            positives = labels[:, None].to(torch.int64) == all_labels[None, :]
            denominator = col[None, :] != row[:, None]
        losses, has_positive = info_nce_from_logits(logits, positives, denominator)
        return losses.sum() / has_positive.sum().clamp(min=1)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
