"""Gated attention MIL (Ilse, Tomczak and Welling, "Attention-based Deep Multiple Instance
Learning", ICML 2018), as used by CLAM.

Each instance ``h_i = ReLU(W x_i)`` gets a score ``w^T (tanh(V h_i) * sigmoid(U h_i))``; a masked
softmax over the bag's real instances turns the scores into attention ``a_i`` (exactly 0 on
padding, summing to 1), and the bag embedding ``z = sum_i a_i h_i`` is classified. An empty bag
has all-zero attention and ``z = 0``, so its logits are the classifier's bias.
"""

from __future__ import annotations

from torch import Tensor, nn

from medcl.mil.base import AGGREGATORS, MILAggregator, MILOutput, masked_softmax, mlp_embed


class GatedAttentionAggregator(MILAggregator):
    """Gated attention pooling followed by a linear bag classifier.

    Args:
        in_dim: feature dimension ``D``.
        n_classes: bag classes.
        hidden_dim: width ``L`` of the instance embedding ``h_i``.
        attention_dim: width of the gated attention branches ``V`` and ``U``.
        dropout: dropout on the instance embedding and the attention branches.
        gated: the gated form (``tanh * sigmoid``); ``False`` uses ``tanh`` only.

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
        attention_dim: int = 64,
        dropout: float = 0.1,
        gated: bool = True,
    ) -> None:
        super().__init__(in_dim, n_classes)
        self.embed = mlp_embed(in_dim, hidden_dim, dropout)
        self.attention_v = nn.Sequential(
            nn.Linear(hidden_dim, attention_dim), nn.Tanh(), nn.Dropout(dropout)
        )
        self.attention_u: nn.Module | None = None
        if gated:
            self.attention_u = nn.Sequential(
                nn.Linear(hidden_dim, attention_dim), nn.Sigmoid(), nn.Dropout(dropout)
            )
        self.attention_w = nn.Linear(attention_dim, 1)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def attention_scores(self, h: Tensor) -> Tensor:
        """Unnormalised attention scores ``(B, N)`` of instance embeddings ``(B, N, L)``."""
        a = self.attention_v(h)
        if self.attention_u is not None:
            a = a * self.attention_u(h)
        return self.attention_w(a).squeeze(-1)

    def forward(self, features: Tensor, mask: Tensor) -> MILOutput:
        self.check_inputs(features, mask)
        h = self.embed(features)
        attention = masked_softmax(self.attention_scores(h), mask)
        z = (attention.unsqueeze(-1) * h).sum(dim=1)
        return MILOutput(self.classifier(z), None, attention)


@AGGREGATORS.register("abmil")
def build_abmil(
    in_dim: int,
    n_classes: int = 2,
    hidden_dim: int = 128,
    attention_dim: int = 64,
    dropout: float = 0.1,
    gated: bool = True,
) -> GatedAttentionAggregator:
    """Gated attention MIL (Ilse et al. 2018)."""
    return GatedAttentionAggregator(in_dim, n_classes, hidden_dim, attention_dim, dropout, gated)
