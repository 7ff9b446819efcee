"""The global contrastive losses G^R, G^{D-} and G^D of Chaitanya et al. (NeurIPS 2020).

"Contrastive learning of global and local features for medical image segmentation with limited
annotations". Each volume is split along its slice axis into ``S`` partitions; a batch holds 2D
images with their partition index and volume id, and two augmented views of each image. The three
losses are the masked InfoNCE of :mod:`medcl.losses.contrastive` with different masks on the
``2B`` stacked embeddings ``[z1; z2]``:

* G^R (random strategy, = SimCLR): positive = the other view of the same image;
* G^{D-}: as G^R, but images of the same partition from *other* volumes are no negatives;
* G^D: those images (both views) are positives too.

Images of the same partition from the *same* volume (possible when a sampler draws several slices
per partition) stay ordinary negatives in every variant, as in the paper's definitions, which only
treat partitions across volumes as related.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from medcl.losses.contrastive import (
    check_temperature,
    masked_info_nce,
    ntxent_positive_mask,
)
from medcl.registry import Registry

GLOBAL_LOSSES: Registry[nn.Module] = Registry("global loss")


def _check_views(z1: Tensor, z2: Tensor) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must both have shape (B, D), got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )


def _check_ids(name: str, ids: Tensor | None, batch_size: int) -> Tensor:
    if ids is None:
        raise ValueError(f"{name} ids are required by this loss")
    if tuple(ids.shape) != (batch_size,):
        raise ValueError(f"{name} must have shape ({batch_size},), got {tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex:
        raise ValueError(f"{name} must hold integer ids, got dtype {ids.dtype}")
    return ids


def same_partition_other_volume(partition: Tensor, volume: Tensor) -> Tensor:
    """``(2B, 2B)`` bool: stacked images ``i, j`` share a partition but come from other volumes.

    Args:
        partition: ``(B,)`` partition index of each image.
        volume: ``(B,)`` volume id of each image.
    """
    p = partition.repeat(2)
    v = volume.repeat(2)
    return (p[:, None] == p[None, :]) & (v[:, None] != v[None, :])


def partition_masks(
    partition: Tensor, volume: Tensor, *, domain_positives: bool
) -> tuple[Tensor, Tensor]:
    """Positives and excluded pairs of the ``2B`` stacked batch ``[z1; z2]``.

    Args:
        partition: ``(B,)`` partition index of each image.
        volume: ``(B,)`` volume id of each image.
        domain_positives: True for G^D (same partition, other volume -> positive); False for
            G^{D-} (same partition, other volume -> excluded from the negatives).

    Returns:
        ``(positives, exclude)``, both ``(2B, 2B)`` bool.
    """
    related = same_partition_other_volume(partition, volume)
    views = ntxent_positive_mask(partition.shape[0], device=partition.device)
    if domain_positives:
        return views | related, related.new_zeros(related.shape)
    return views, related


class _GlobalLoss(nn.Module):
    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        check_temperature(temperature)
        self.temperature = float(temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class GlobalGRLoss(_GlobalLoss):
    """G^R, the random strategy of Chaitanya et al. (NeurIPS 2020): SimCLR's NT-Xent.

    The positive of each image is its other augmented view; the other ``2B - 2`` embeddings are
    negatives. ``partition`` and ``volume`` are accepted (so the three global losses are
    interchangeable) and ignored.

    Args:
        temperature: ``T`` scaling the cosine similarities (paper: 0.1); must be > 0.

    Shape:
        - z1, z2: ``(B, D)``, the two views of ``B`` images
        - partition, volume: ``(B,)`` integer ids (optional, unused)
        - output: scalar
    """

    def forward(
        self,
        z1: Tensor,
        z2: Tensor,
        partition: Tensor | None = None,
        volume: Tensor | None = None,
    ) -> Tensor:
        _check_views(z1, z2)
        positives = ntxent_positive_mask(z1.shape[0], device=z1.device)
        return masked_info_nce(torch.cat([z1, z2]), positives, temperature=self.temperature)


class GlobalGDMinusLoss(_GlobalLoss):
    """G^{D-} of Chaitanya et al. (NeurIPS 2020): G^R without same-partition negatives.

    The positive of each image is its other view; images from the same partition of other volumes
    (both views) are removed from the denominator, so they are neither pulled nor pushed.

    Args:
        temperature: ``T`` scaling the cosine similarities (paper: 0.1); must be > 0.

    Shape:
        - z1, z2: ``(B, D)``, the two views of ``B`` images
        - partition, volume: ``(B,)`` integer ids
        - output: scalar
    """

    def forward(self, z1: Tensor, z2: Tensor, partition: Tensor, volume: Tensor) -> Tensor:
        _check_views(z1, z2)
        b = z1.shape[0]
        positives, exclude = partition_masks(
            _check_ids("partition", partition, b),
            _check_ids("volume", volume, b),
            domain_positives=False,
        )
        return masked_info_nce(
            torch.cat([z1, z2]), positives, temperature=self.temperature, exclude=exclude
        )


class GlobalGDLoss(_GlobalLoss):
    """G^D of Chaitanya et al. (NeurIPS 2020): same partition across volumes is positive.

    The positives of each image are its other view and both views of every image from the same
    partition of another volume (averaged as in SupCon's L_out); all other embeddings are
    negatives.

    Args:
        temperature: ``T`` scaling the cosine similarities (paper: 0.1); must be > 0.

    Shape:
        - z1, z2: ``(B, D)``, the two views of ``B`` images
        - partition, volume: ``(B,)`` integer ids
        - output: scalar
    """

    def forward(self, z1: Tensor, z2: Tensor, partition: Tensor, volume: Tensor) -> Tensor:
        _check_views(z1, z2)
        b = z1.shape[0]
        positives, _ = partition_masks(
            _check_ids("partition", partition, b),
            _check_ids("volume", volume, b),
            domain_positives=True,
        )
        return masked_info_nce(torch.cat([z1, z2]), positives, temperature=self.temperature)


@GLOBAL_LOSSES.register("gr")
def _build_gr(temperature: float = 0.1) -> nn.Module:
    return GlobalGRLoss(temperature)


@GLOBAL_LOSSES.register("gd-")
def _build_gd_minus(temperature: float = 0.1) -> nn.Module:
    return GlobalGDMinusLoss(temperature)


@GLOBAL_LOSSES.register("gd")
def _build_gd(temperature: float = 0.1) -> nn.Module:
    return GlobalGDLoss(temperature)


def create_global_loss(name: str, **kwargs: float) -> nn.Module:
    """Build the global loss registered as ``name`` (``"gr"``, ``"gd-"``, ``"gd"``)."""
    return GLOBAL_LOSSES.create(name, **kwargs)


def list_global_losses() -> list[str]:
    """Names of the registered global losses."""
    return GLOBAL_LOSSES.names()
