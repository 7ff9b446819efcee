"""Supervised contrastive loss (SupCon) over several views per image."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from medcl.engine.distributed import get_rank
from medcl.losses.contrastive import check_temperature
from medcl.losses.ntxent import id_info_nce


class SupConLoss(nn.Module):
    """Supervised contrastive loss, the L_out form.

    Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, eq. 2. The ``B * V``
    embeddings are stacked view-major (``[view 0 of all images; view 1; ...]``) and every one is an
    anchor; its positives are all the other embeddings with the same label (including the other
    views of its own image), its denominator every other embedding. The mean over the positives is
    taken outside the log. The result is scaled by ``temperature / base_temperature`` as in the
    authors' code. Without labels each image is its own class: SimCLR's NT-Xent for ``V = 2``.

    Args:
        temperature: ``T`` scaling the cosine similarities; must be > 0.
        base_temperature: the loss is multiplied by ``temperature / base_temperature``; None
            (default) means ``base_temperature = temperature`` (factor 1).
        gather_distributed: take the negatives and positives from the global batch of every
            process (opt-in; a no-op in one process); labels are gathered too.

    Shape:
        - features: ``(B, V, D)``, ``V >= 1`` views of ``B`` images (embeddings, any scale)
        - labels: ``(B,)`` integer class labels, or None
        - output: scalar
    """

    #: what ``forward`` takes (see :data:`medcl.losses.registry.LossInputs`)
    inputs: ClassVar[str] = "views"

    def __init__(
        self,
        temperature: float = 0.1,
        base_temperature: float | None = None,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        check_temperature(temperature)
        if base_temperature is not None:
            check_temperature(base_temperature)
        if not isinstance(gather_distributed, bool):
            raise ValueError(f"gather_distributed must be a bool, got {gather_distributed!r}")
        self.temperature = float(temperature)
        self.base_temperature = float(temperature if base_temperature is None else base_temperature)
        self.gather_distributed = gather_distributed

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        if features.ndim != 3:
            raise ValueError(f"features must have shape (B, V, D), got {tuple(features.shape)}")
        b, v, _ = features.shape
        if labels is None:
            offset = get_rank() * b if self.gather_distributed else 0
            ids = torch.arange(b, device=features.device) + offset
        else:
            if tuple(labels.shape) != (b,):
                raise ValueError(f"labels must have shape ({b},), got {tuple(labels.shape)}")
            if labels.dtype.is_floating_point or labels.dtype.is_complex:
                raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
            ids = labels
        z = features.transpose(0, 1).reshape(b * v, -1)  # view-major, as torch.cat(unbind(1))
        loss = id_info_nce(
            z,
            ids.repeat(v),
            temperature=self.temperature,
            gather_distributed=self.gather_distributed,
        )
        return loss * (self.temperature / self.base_temperature)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, base_temperature={self.base_temperature}, "
            f"gather_distributed={self.gather_distributed}"
        )
