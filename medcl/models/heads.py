"""Projection heads used only during contrastive pretraining.

Chaitanya et al., NeurIPS 2020: the global loss is computed on ``g1(e(x))`` (dense layers on the
encoder's bottleneck), the local loss on ``h1(d_l(e(x)))`` (1x1 convolutions on a decoder feature
map). Both heads are discarded before fine-tuning.
"""

from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """Linear-ReLU-Linear MLP mapping a pooled feature vector to the contrastive embedding.

    The paper's g1 flattens the bottleneck (3200 values) into 1024 -> 128 dense layers; we pool the
    bottleneck first (so any input size works), then apply the same two layers.

    Args:
        in_dim: input feature size.
        hidden_dim: hidden layer size (paper: 1024).
        out_dim: embedding size (paper: 128).

    Shape:
        - Input: ``(batch_size, in_dim)``
        - Output: ``(batch_size, out_dim)``
    """

    def __init__(self, in_dim: int, hidden_dim: int = 1024, out_dim: int = 128) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected (batch, {self.in_dim}) input, got {tuple(x.shape)}")
        out: torch.Tensor = self.layers(x)
        return out


class LocalProjectionHead(nn.Module):
    """Two 1x1 convolutions (ReLU between) applied to a feature map: the paper's h1.

    Args:
        spatial_dims: 2 (slices) or 3 (patches).
        in_channels: channels of the decoder feature map.
        hidden_channels: channels after the first 1x1 convolution.
        out_channels: channels of the local embedding map.

    Shape:
        - Input: ``(batch_size, in_channels, *spatial)``
        - Output: ``(batch_size, out_channels, *spatial)``, same spatial size
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, hidden_channels: int, out_channels: int
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        for name, value in (
            ("in_channels", in_channels),
            ("hidden_channels", hidden_channels),
            ("out_channels", out_channels),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.layers = nn.Sequential(
            conv(in_channels, hidden_channels, kernel_size=1),
            nn.ReLU(inplace=True),
            conv(hidden_channels, out_channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layers(x)
        return out
