"""The local (dense) contrastive loss of Chaitanya et al. (NeurIPS 2020), section 3.2.

The decoder feature maps of two views of an image (which differ only by intensity transforms, so
they are aligned pixel for pixel) are cut into a grid of ``num_regions x num_regions`` local
regions of ``region_size x region_size`` pixels. Each region's embedding is the mean of the
feature vectors inside it, l2-normalised. For an anchor region, the positive is the same region in
the other view; the negatives are the other regions of the same image's two feature maps. In the
domain variant (the paper's L^D_local) the same region in the images of the same partition from
other volumes (both views) is a positive too.

Memory: no ``(HW x HW)`` pixel similarity is ever built. The regions are pooled first
(``avg_pool2d`` on the region grid, cheap), so the similarities are ``(2R x 2R)`` per image
(``R = num_regions**2``), computed for ``chunk_size`` images at a time. With ``checkpoint=True``
(default) each chunk's similarities are recomputed in the backward pass instead of kept, so the
peak memory of the loss stays bounded by the chunk, however large the batch.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from medcl.losses.contrastive import check_temperature, info_nce_from_logits
from medcl.registry import Registry

LocalReduction = Literal["mean", "none"]

#: Losses on aligned feature maps, by name (the local stage of volume pretraining):
#: ``local`` (:class:`LocalContrastiveLoss`) and ``dense`` (:mod:`medcl.losses.dense`).
LOCAL_LOSSES: Registry[nn.Module] = Registry("local loss")


def region_axis(
    size: int, region_size: int, num_regions: int, stride: int | None
) -> tuple[int, int]:
    """Start offset and stride of the region grid along one axis of ``size`` pixels.

    Without ``stride`` the regions are spread as far apart as the map allows
    (``(size - region_size) // (num_regions - 1)``); the grid is centred on the map.

    Raises:
        ValueError: the grid does not fit in ``size`` pixels.
    """
    if num_regions == 1:
        step = region_size
    elif stride is None:
        step = max((size - region_size) // (num_regions - 1), 1)
    else:
        step = stride
    extent = region_size + (num_regions - 1) * step
    if extent > size:
        raise ValueError(
            f"region grid larger than feature map: {num_regions} regions of {region_size} px "
            f"with stride {step} span {extent} px, the map has {size}"
        )
    return (size - extent) // 2, step


def pool_regions(
    features: Tensor, region_size: int, num_regions: int, stride: int | None = None
) -> Tensor:
    """Mean feature vector of every region of the grid, row-major over the grid.

    Args:
        features: ``(B, C, H, W)`` feature maps.
        region_size: side of a square region in pixels.
        num_regions: regions per axis (``R = num_regions**2`` in all).
        stride: pixels between region starts; None spreads the grid over the map.

    Returns:
        ``(B, R, C)`` region embeddings (not normalised).
    """
    _, _, h, w = features.shape
    y0, sy = region_axis(h, region_size, num_regions, stride)
    x0, sx = region_axis(w, region_size, num_regions, stride)
    ey = region_size + (num_regions - 1) * sy
    ex = region_size + (num_regions - 1) * sx
    if y0 == 0 and x0 == 0:
        # Pool the map itself and drop the surplus windows: slicing the input first would make
        # avg_pool2d copy a non-contiguous view (a transient copy of the whole feature map).
        pooled = F.avg_pool2d(features, kernel_size=region_size, stride=(sy, sx))
        pooled = pooled[:, :, :num_regions, :num_regions]
    else:
        crop = features[:, :, y0 : y0 + ey, x0 : x0 + ex]
        pooled = F.avg_pool2d(crop, kernel_size=region_size, stride=(sy, sx))
    return pooled.flatten(2).transpose(1, 2)


def _chunk_losses(
    anchors: Tensor, temperature: float, everyone: Tensor | None, related: Tensor | None
) -> Tensor:
    """Per-anchor losses ``(c, 2R)`` of ``c`` images.

    ``anchors``: ``(c, 2R, C)`` normalised region embeddings, views stacked ``[v1; v2]``.
    ``everyone``: ``(B, 2, R, C)`` all images' embeddings and ``related``: ``(c, B)`` bool
    (same partition, other volume) for the domain variant, else None.
    """
    c, two_r, _ = anchors.shape
    r = two_r // 2
    logits = anchors @ anchors.transpose(1, 2) / temperature  # (c, 2R, 2R)
    idx = torch.arange(two_r, device=anchors.device)
    own_positives = ((idx[:, None] - idx[None, :]).abs() == r).expand(c, two_r, two_r)
    own_denominator = (idx[:, None] != idx[None, :]).expand(c, two_r, two_r)
    if everyone is None or related is None:
        losses, _ = info_nce_from_logits(logits, own_positives, own_denominator)
        return losses
    b = everyone.shape[0]
    # Same region r in both views of every image: (c, 2, R, B, 2) -> (c, 2R, 2B).
    cross = torch.einsum("cvrd,bwrd->cvrbw", anchors.view(c, 2, r, -1), everyone) / temperature
    cross = cross.reshape(c, two_r, 2 * b)
    cross_pos = related[:, None, None, :, None].expand(c, 2, r, b, 2).reshape(c, two_r, 2 * b)
    losses, _ = info_nce_from_logits(
        torch.cat([logits, cross], dim=-1),
        torch.cat([own_positives, cross_pos], dim=-1),
        torch.cat([own_denominator, cross_pos], dim=-1),
    )
    return losses


class LocalContrastiveLoss(nn.Module):
    """Local contrastive loss L_local (and L^D_local with ``domain=True``).

    Chaitanya et al., "Contrastive learning of global and local features for medical image
    segmentation with limited annotations", NeurIPS 2020, section 3.2. Every anchor region's
    loss is the InfoNCE of :mod:`medcl.losses.contrastive` (SupCon L_out form when there are
    several positives); the result is the mean over all ``2R`` anchors of all ``B`` images.

    Args:
        region_size: side of a square region in pixels (paper: 3).
        num_regions: regions per axis (paper: 13, i.e. a 13x13 grid).
        stride: pixels between region starts; None spreads the grid over the map (centred).
        temperature: ``T`` scaling the cosine similarities (paper: 0.1); must be > 0.
        domain: also treat the same region of same-partition images of other volumes as
            positives (needs ``partition`` and ``volume``).
        chunk_size: images whose similarities are computed at once.
        checkpoint: recompute each chunk's similarities in the backward pass rather than
            keeping them (bounded memory for big batches or grids).
        reduction: ``"mean"`` (scalar) or ``"none"`` (``(B,)``, each image's mean over anchors).

    Shape:
        - f1, f2: ``(B, C, H, W)`` decoder features of the two views, spatially aligned
        - partition, volume: ``(B,)`` integer ids (only with ``domain=True``)
        - output: scalar, or ``(B,)`` with ``reduction="none"``
    """

    #: what ``forward`` takes (see :data:`medcl.losses.registry.LossInputs`)
    inputs: ClassVar[str] = "feature_maps"

    def __init__(
        self,
        region_size: int = 3,
        num_regions: int = 13,
        temperature: float = 0.1,
        domain: bool = False,
        chunk_size: int = 8,
        stride: int | None = None,
        checkpoint: bool = True,
        reduction: LocalReduction = "mean",
    ) -> None:
        super().__init__()
        check_temperature(temperature)
        for name, value in (
            ("region_size", region_size),
            ("num_regions", num_regions),
            ("chunk_size", chunk_size),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if stride is not None and (not isinstance(stride, int) or stride < 1):
            raise ValueError(f"stride must be a positive integer or None, got {stride!r}")
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        self.region_size = region_size
        self.num_regions = num_regions
        self.stride = stride
        self.temperature = float(temperature)
        self.domain = domain
        self.chunk_size = chunk_size
        self.checkpoint = checkpoint
        self.reduction: LocalReduction = reduction

    def embed(self, features: Tensor) -> Tensor:
        """``(B, R, C)`` l2-normalised region embeddings of ``(B, C, H, W)`` feature maps."""
        pooled = pool_regions(features, self.region_size, self.num_regions, self.stride)
        compute = torch.float64 if pooled.dtype == torch.float64 else torch.float32
        return F.normalize(pooled.to(compute), dim=-1)

    def forward(
        self,
        f1: Tensor,
        f2: Tensor,
        partition: Tensor | None = None,
        volume: Tensor | None = None,
    ) -> Tensor:
        if f1.ndim != 4 or f1.shape != f2.shape:
            raise ValueError(
                "f1 and f2 must both have shape (B, C, H, W), got "
                f"{tuple(f1.shape)} and {tuple(f2.shape)}"
            )
        b = f1.shape[0]
        related: Tensor | None = None
        if self.domain:
            if partition is None or volume is None:
                raise ValueError("domain=True needs the partition and volume ids of each image")
            if tuple(partition.shape) != (b,) or tuple(volume.shape) != (b,):
                raise ValueError(
                    f"partition and volume must have shape ({b},), got "
                    f"{tuple(partition.shape)} and {tuple(volume.shape)}"
                )
            related = (partition[:, None] == partition[None, :]) & (
                volume[:, None] != volume[None, :]
            )
        everyone = torch.stack([self.embed(f1), self.embed(f2)], dim=1)  # (B, 2, R, C)
        n_regions = everyone.shape[2]
        anchors = everyone.flatten(1, 2)  # (B, 2R, C), views stacked per image
        others = everyone if self.domain else None
        use_checkpoint = self.checkpoint and torch.is_grad_enabled() and anchors.requires_grad
        per_image = []
        for start in range(0, b, self.chunk_size):
            stop = min(start + self.chunk_size, b)
            rel = None if related is None else related[start:stop]
            args = (anchors[start:stop], self.temperature, others, rel)
            if use_checkpoint:
                losses = _checkpoint(_chunk_losses, *args, use_reentrant=False)
            else:
                losses = _chunk_losses(*args)
            per_image.append(losses.sum(dim=1))
        # Every anchor has a positive (its other view), so each image has 2R anchors.
        image_losses = torch.cat(per_image) / (2 * n_regions)
        return image_losses if self.reduction == "none" else image_losses.mean()

    def extra_repr(self) -> str:
        return (
            f"region_size={self.region_size}, num_regions={self.num_regions}, "
            f"stride={self.stride}, temperature={self.temperature}, domain={self.domain}, "
            f"chunk_size={self.chunk_size}"
        )


LOCAL_LOSSES.register("local")(LocalContrastiveLoss)
