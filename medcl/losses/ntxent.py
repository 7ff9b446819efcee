"""NT-Xent (SimCLR) with opt-in negatives from every process, and the shared id-based InfoNCE.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020.
The mathematics is the masked InfoNCE of :mod:`medcl.losses.contrastive`; this module only builds
the positives from integer ids (same id = positive) and, with ``gather_distributed=True``, lets the
local anchors meet the embeddings of every process (as lightly's ``gather_distributed``).

Distributed semantics: each process keeps its own ``N`` anchors and contrasts them with the
``world_size * N`` gathered candidates; its own anchors sit at rows ``rank * N + i`` of the
gathered batch (the self-pair left out of the denominator is shifted by that offset). Every process
has the same number of anchors, so the mean of the per-process losses is the loss of one process
over the global batch, and with DDP's gradient averaging the update is the same as well.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medcl.engine.distributed import gather_with_grad, get_rank, get_world_size
from medcl.losses.contrastive import (
    Reduction,
    check_reduction,
    check_temperature,
    info_nce_from_logits,
    masked_info_nce,
    reduce_anchor_losses,
)


def id_info_nce(
    z: Tensor,
    ids: Tensor,
    *,
    temperature: float,
    gather_distributed: bool = False,
    reduction: Reduction = "mean",
) -> Tensor:
    """InfoNCE (SupCon L_out form) whose positives are the rows sharing an id.

    Args:
        z: ``(N, D)`` this process's embeddings (the anchors).
        ids: ``(N,)`` integer ids; ``i`` and ``j != i`` are positives when ``ids[i] == ids[j]``.
            With ``gather_distributed`` the ids must be global (equal ids on two processes are
            positives of each other).
        temperature: ``T`` in ``s_ij = cos(z_i, z_j) / T``; must be > 0.
        gather_distributed: contrast the local anchors with the embeddings of every process
            (:func:`medcl.engine.distributed.gather_with_grad`); the same as False in one process.
        reduction: ``"mean"`` over anchors with a positive, ``"sum"``, or ``"none"`` (``(N,)``).

    Returns:
        The loss: a scalar, or ``(N,)`` for ``reduction="none"``.
    """
    check_temperature(temperature)
    check_reduction(reduction)
    if z.ndim != 2 or tuple(ids.shape) != (z.shape[0],):
        raise ValueError(
            f"z must be (N, D) and ids (N,), got {tuple(z.shape)} and {tuple(ids.shape)}"
        )
    if not gather_distributed or get_world_size() == 1:
        positives = ids[:, None] == ids[None, :]
        return masked_info_nce(z, positives, temperature=temperature, reduction=reduction)
    n = z.shape[0]
    everyone = gather_with_grad(z)  # (W * N, D), rank order; gradient reaches the local z
    all_ids = gather_with_grad(ids)
    compute = torch.float64 if z.dtype == torch.float64 else torch.float32
    anchors = F.normalize(z.to(compute), dim=-1)
    logits = anchors @ F.normalize(everyone.to(compute), dim=-1).T / temperature  # (N, W * N)
    cols = torch.arange(everyone.shape[0], device=z.device)
    rows = torch.arange(n, device=z.device) + get_rank() * n  # own rows in the gathered batch
    denominator = rows[:, None] != cols[None, :]
    positives = ids[:, None] == all_ids[None, :]
    losses, has_positive = info_nce_from_logits(logits, positives, denominator)
    return reduce_anchor_losses(losses, has_positive, reduction)


class NTXentLoss(nn.Module):
    """NT-Xent, the contrastive loss of SimCLR.

    Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
    ICML 2020. For ``B`` images with two views the ``2B`` embeddings are stacked ``[z1; z2]``;
    each anchor's positive is the other view of its image, the other ``2B - 2`` embeddings (or
    ``2 * world_size * B - 2`` with ``gather_distributed``) are its negatives.

    Args:
        temperature: ``T`` scaling the cosine similarities; must be > 0.
        gather_distributed: take the negatives from the global batch of every process (opt-in;
            a no-op in one process). The returned loss is the mean over this process's anchors.

    Shape:
        - z1, z2: ``(B, D)``, the two views of ``B`` images (the same ``B`` on every process)
        - output: scalar
    """

    #: what ``forward`` takes (see :data:`medcl.losses.registry.LossInputs`)
    inputs: ClassVar[str] = "pair"

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = False) -> None:
        super().__init__()
        check_temperature(temperature)
        if not isinstance(gather_distributed, bool):
            raise ValueError(f"gather_distributed must be a bool, got {gather_distributed!r}")
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        if z1.ndim != 2 or z1.shape != z2.shape:
            raise ValueError(
                "z1 and z2 must both have shape (B, D), got "
                f"{tuple(z1.shape)} and {tuple(z2.shape)}"
            )
        b = z1.shape[0]
        offset = get_rank() * b if self.gather_distributed else 0
        image = torch.arange(b, device=z1.device) + offset
        return id_info_nce(
            torch.cat([z1, z2]),
            image.repeat(2),
            temperature=self.temperature,
            gather_distributed=self.gather_distributed,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"
