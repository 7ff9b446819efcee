"""End-to-end INS: the instance contrast and classifier train the image encoder too, as the paper.

The INS paper trains a ResNet-18 on the patches themselves; the frozen-feature INS of
:mod:`medcl.mil.ins_train` is the fast path. Here an image encoder is put in front of the INS
instance head and the *same* loop (:func:`medcl.mil.ins_train.fit_ins`) trains both:

* bags hold their instances as flattened images, ``(N, 3 * size * size)`` float32 in [0, 1], so
  bags, padding, the instance table, the warm-up bag pass and :func:`~medcl.mil.predict
  .predict_bags` work unchanged; :class:`FlatImageEncoder` un-flattens them for the encoder;
* :class:`ImageINS` is an ``ins`` aggregator whose instance embedding is ``encoder -> MLP``; the
  key network of the contrast is its momentum copy, encoder included (MoCo, as the reference);
* the two views of an instance are random augmentations (:func:`augment_views`: flips, 90-degree
  rotations, a random resized crop and brightness / contrast jitter; the reference uses RandAugment
  on its strong view).

Runnable on the CPU at a small image size (32 px: about 10 MFLOPs per ResNet-18 forward).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medcl.mil.instance import InstanceAggregator


class FlatImageEncoder(nn.Module):
    """Un-flatten ``(..., 3 * size * size)`` instances, encode them: ``(..., embed_dim)``.

    Args:
        encoder: maps ``(B, 3, size, size)`` images to ``(B, embed_dim)``.
        size: image side.
        mean, std: per-channel normalisation applied first (ImageNet's by default).
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        encoder: nn.Module,
        size: int,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.size = int(size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        images = x.reshape(-1, 3, self.size, self.size)
        if images.shape[0] == 0:
            out = self.encoder(torch.zeros(1, 3, self.size, self.size, device=x.device))
            return out.new_zeros(*lead, out.shape[-1])
        feats = self.encoder((images - self.mean) / self.std)
        return feats.reshape(*lead, feats.shape[-1])


class ImageINS(InstanceAggregator):
    """The INS instance classifier on images: ``encoder -> Linear/ReLU/Dropout -> classifier``
    (and ``-> projector`` for the contrast). Input: bags of flattened images ``(B, N, 3*s*s)``.

    Args:
        encoder: ``(B, 3, s, s) -> (B, embed_dim)`` (e.g. :func:`medcl.models.encoders
            .create_encoder`'s ``timm:resnet18``).
        embed_dim: the encoder's output size.
        size: image side ``s``.
        n_classes, hidden_dim, dropout, proj_dim: as the ``ins`` aggregator.
    """

    def __init__(
        self,
        encoder: nn.Module,
        embed_dim: int,
        size: int,
        n_classes: int = 2,
        hidden_dim: int = 128,
        dropout: float = 0.1,
        proj_dim: int = 128,
    ) -> None:
        super().__init__(
            3 * size * size, n_classes, hidden_dim, dropout, pooling="mean_prob", proj_dim=proj_dim
        )
        mlp = nn.Sequential(nn.Linear(embed_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.embed = nn.Sequential(FlatImageEncoder(encoder, size), mlp)
        self.image_size = int(size)


def _random_resized_crop(images: Tensor, scale: tuple[float, float], g: torch.Generator) -> Tensor:
    """One random square crop per image (area fraction in ``scale``), resized back."""
    b, _, s, _ = images.shape
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=g)
    side = (area.sqrt() * s).round().clamp(2, s).long()
    out = torch.empty_like(images)
    for i in range(b):
        k = int(side[i])
        y, x = (int(torch.randint(0, s - k + 1, (1,), generator=g)) for _ in range(2))
        crop = images[i : i + 1, :, y : y + k, x : x + k]
        out[i] = F.interpolate(crop, size=(s, s), mode="bilinear", align_corners=False)[0]
    return out


def augment(images: Tensor, g: torch.Generator, strong: bool) -> Tensor:
    """Flips and 90-degree rotations (any orientation is valid for dermoscopy and pathology);
    the strong view adds a random resized crop (area 0.3-1) and brightness / contrast jitter.

    Shape: ``(B, 3, s, s)`` in [0, 1] -> the same.
    """
    out = images
    if bool(torch.rand(1, generator=g) < 0.5):
        out = out.flip(-1)
    out = torch.rot90(out, int(torch.randint(0, 4, (1,), generator=g)), dims=(-2, -1))
    if strong:
        out = _random_resized_crop(out, (0.3, 1.0), g)
        b = out.shape[0]
        bright = torch.empty(b, 1, 1, 1).uniform_(-0.2, 0.2, generator=g)
        contrast = torch.empty(b, 1, 1, 1).uniform_(0.8, 1.2, generator=g)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = ((out - mean) * contrast + mean + bright).clamp(0.0, 1.0)
    return out


def augment_views(size: int, seed: int = 0) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """``views(x) -> (weak, strong)`` for flattened image batches ``(B, 3 * size * size)``."""
    g = torch.Generator().manual_seed(seed)

    def views(x: Tensor) -> tuple[Tensor, Tensor]:
        images = x.reshape(-1, 3, size, size)
        weak = augment(images, g, strong=False).reshape(x.shape)
        strong = augment(images, g, strong=True).reshape(x.shape)
        return weak, strong

    return views


def flat_images(images: Tensor) -> Tensor:
    """``(N, 3, s, s)`` -> ``(N, 3 * s * s)`` float32 (the instance layout of image bags)."""
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be (N, 3, s, s), got {tuple(images.shape)}")
    return images.reshape(images.shape[0], -1).to(torch.float32)


def image_side(flat_dim: int) -> int:
    """The side ``s`` of flattened ``3 * s * s`` images."""
    side = math.isqrt(flat_dim // 3)
    if 3 * side * side != flat_dim:
        raise ValueError(f"{flat_dim} is not 3 * s * s")
    return side
