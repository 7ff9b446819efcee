"""Dense (local) contrastive loss for 2D patches: the volume local loss, with patch defaults.

The mathematics is :class:`medcl.losses.local.LocalContrastiveLoss` (Chaitanya et al., NeurIPS
2020, L_local), not repeated here: the feature maps of two *spatially aligned* views of a patch
(views differing only by colour / stain / blur, the geometric augmentation applied once before the
copies are made) are pooled into a grid of regions; a region's positive is the same region in the
other view, its negatives the other regions of both views of the same patch.
"""

from __future__ import annotations

from torch import Tensor

from medcl.losses.local import LOCAL_LOSSES, LocalContrastiveLoss, LocalReduction


class DenseLocalLoss(LocalContrastiveLoss):
    """Local contrastive loss on the feature maps of two aligned views of 2D patches.

    Chaitanya et al., "Contrastive learning of global and local features for medical image
    segmentation with limited annotations", NeurIPS 2020, section 3.2 (L_local); no partitions
    (``domain`` is always False). The defaults fit a CNN's last feature map of a 224 px patch
    (7 x 7): every cell is a region.

    Args:
        region_size: side of a square region in feature-map pixels (default 1).
        num_regions: regions per axis (default 7, ``R = 49`` regions).
        temperature: ``T`` scaling the cosine similarities; must be > 0.
        chunk_size: patches whose similarities are computed at once.
        stride: pixels between region starts; None spreads the grid over the map (centred).
        checkpoint: recompute each chunk's similarities in the backward pass (bounded memory).
        reduction: ``"mean"`` (scalar) or ``"none"`` (``(B,)``, each patch's mean over anchors).

    Shape:
        - f1, f2: ``(B, C, H, W)`` feature maps of the two aligned views, ``H, W`` at least the
          extent of the region grid
        - output: scalar, or ``(B,)`` with ``reduction="none"``
    """

    def __init__(
        self,
        region_size: int = 1,
        num_regions: int = 7,
        temperature: float = 0.1,
        chunk_size: int = 8,
        stride: int | None = None,
        checkpoint: bool = True,
        reduction: LocalReduction = "mean",
    ) -> None:
        super().__init__(
            region_size=region_size,
            num_regions=num_regions,
            temperature=temperature,
            domain=False,
            chunk_size=chunk_size,
            stride=stride,
            checkpoint=checkpoint,
            reduction=reduction,
        )

    def forward(  # type: ignore[override]
        self, f1: Tensor, f2: Tensor
    ) -> Tensor:
        return super().forward(f1, f2)


LOCAL_LOSSES.register("dense")(DenseLocalLoss)
