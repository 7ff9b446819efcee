"""A small transformer aggregator with a CLS token (in the spirit of TransMIL, Shao et al.,
NeurIPS 2021, without its positional PPEG module, so it needs no tile grid).

Instances are embedded (``Linear -> ReLU -> Dropout``), a learned CLS token is prepended, and
pre-norm self-attention blocks run with a key padding mask, so padded instances are never
attended to; the CLS output is classified. ``attention`` is the last block's CLS-to-instance
attention averaged over heads, with the CLS-to-itself weight removed and renormalised over the
real instances (0 on padding). An empty bag: the CLS token attends only to itself, the logits are
finite and the attention is all 0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from medcl.mil.base import AGGREGATORS, MILAggregator, MILOutput, mlp_embed


class _Block(nn.Module):
    """Pre-norm transformer block returning the averaged attention weights too."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)
        )

    def forward(self, x: Tensor, pad: Tensor) -> tuple[Tensor, Tensor]:
        y = self.norm1(x)
        out, weights = self.attn(y, y, y, key_padding_mask=pad, need_weights=True)
        x = x + out
        x = x + self.mlp(self.norm2(x))
        return x, weights


class TransformerAggregator(MILAggregator):
    """Self-attention over a bag's instances with a CLS token.

    Args:
        in_dim: feature dimension ``D``.
        n_classes: bag classes.
        hidden_dim: token width (divisible by ``heads``).
        heads: attention heads.
        layers: transformer blocks.
        dropout: dropout of the embedding, attention and MLP.

    Shape:
        - features: ``(B, N, D)``, mask: ``(B, N)`` bool
        - output: :class:`~medcl.mil.base.MILOutput` with ``logits (B, C)``, ``attention (B, N)``
          and ``instance_scores=None``
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int = 2,
        hidden_dim: int = 128,
        heads: int = 4,
        layers: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(in_dim, n_classes)
        if hidden_dim % heads:
            raise ValueError(f"hidden_dim {hidden_dim} must be divisible by heads {heads}")
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.embed = mlp_embed(in_dim, hidden_dim, dropout)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        nn.init.normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList(_Block(hidden_dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden_dim)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def forward(self, features: Tensor, mask: Tensor) -> MILOutput:
        self.check_inputs(features, mask)
        b = features.shape[0]
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), self.embed(features)], dim=1)
        pad = torch.cat([mask.new_zeros(b, 1), ~mask], dim=1)  # True = ignore
        weights = tokens.new_zeros(b, tokens.shape[1], tokens.shape[1])
        for block in self.blocks:
            tokens, weights = block(tokens, pad)
        cls_attention = weights[:, 0, 1:] * mask
        attention = cls_attention / cls_attention.sum(dim=1, keepdim=True).clamp_min(1e-12)
        logits = self.classifier(self.norm(tokens[:, 0]))
        return MILOutput(logits, None, attention)


@AGGREGATORS.register("transmil")
def build_transmil(
    in_dim: int,
    n_classes: int = 2,
    hidden_dim: int = 128,
    heads: int = 4,
    layers: int = 2,
    dropout: float = 0.1,
) -> TransformerAggregator:
    """A small transformer aggregator with a CLS token and a key padding mask."""
    return TransformerAggregator(in_dim, n_classes, hidden_dim, heads, layers, dropout)
