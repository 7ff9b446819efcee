"""Class-conditioned contrastive invariance (CCI): the loss that fine-tunes InvariantSelectPR.

Zhou et al., "Adapting Large Multimodal Models to Distribution Shifts: The Role of In-Context
Learning", 2024. To pick in-context demonstrations that share the query's *class* rather than its
hospital, the retrieval encoder is fine-tuned so that images of one class cluster together across
domains and an image's embedding does not move when its domain-specific appearance is perturbed.

The loss has two terms:

(a) a supervised-contrastive term (SupCon L_out, Khosla et al., NeurIPS 2020) over the ``2B``
    embeddings ``[z; z_aug]``: positives are every other embedding of the same class (other
    images and both views), negatives the other classes; a positive pair whose domains differ is
    weighted by ``cross_domain_weight`` (``w_ip`` in :func:`~medcl.losses.contrastive.
    masked_info_nce`, the one InfoNCE of medcl), so cross-hospital agreement counts more;
(b) an invariance term ``invariance_weight * mean_i(1 - cos(z_i, z_aug_i))`` pulling each image
    towards its own domain-perturbed view.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medcl.losses.contrastive import check_temperature, masked_info_nce


def _check_weight(name: str, value: float, *, allow_zero: bool) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0.0 if allow_zero else value > 0.0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def _check_ids(name: str, ids: Tensor, b: int) -> None:
    if tuple(ids.shape) != (b,):
        raise ValueError(f"{name} must have shape ({b},), got {tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex:
        raise ValueError(f"{name} must be integers, got dtype {ids.dtype}")


def cci_masks(labels: Tensor, domains: Tensor, cross_domain_weight: float) -> tuple[Tensor, Tensor]:
    """Positives and pair weights of the CCI contrastive term over ``[z; z_aug]``.

    Args:
        labels: ``(B,)`` integer class labels of the images.
        domains: ``(B,)`` integer domain (hospital) ids; a perturbed view keeps its image's domain.
        cross_domain_weight: weight of a positive pair whose domains differ (1 elsewhere).

    Returns:
        ``(positives, weights)``: ``(2B, 2B)`` bool (same class; the diagonal is left to the
        InfoNCE, which ignores it) and ``(2B, 2B)`` float.
    """
    lab = labels.repeat(2)
    dom = domains.repeat(2)
    positives = lab[:, None] == lab[None, :]
    cross = dom[:, None] != dom[None, :]
    weights = torch.where(cross, float(cross_domain_weight), 1.0)
    return positives, weights


class CCILoss(nn.Module):
    """Class-conditioned contrastive invariance loss (Zhou et al. 2024, InvariantSelectPR).

    ``loss = supcon + invariance`` where ``supcon`` is the masked InfoNCE (SupCon L_out form)
    over ``[z; z_aug]`` with same-class positives, cross-domain positive pairs weighted by
    ``cross_domain_weight``, and ``invariance = invariance_weight * mean_i(1 - cos(z_i,
    z_aug_i))``. With ``cross_domain_weight=1`` and ``invariance_weight=0`` it is SupCon. The two
    terms of the last call are kept, detached, in :attr:`last_terms` for logging;
    :meth:`forward_terms` returns them with their graphs.

    Args:
        temperature: ``T`` scaling the cosine similarities; must be > 0.
        cross_domain_weight: weight ``w_ip`` of a same-class pair from two domains; must be > 0.
        invariance_weight: weight of the image / perturbed-view cosine term; must be >= 0.

    Shape:
        - z: ``(B, D)`` embeddings of the images
        - z_aug: ``(B, D)`` embeddings of domain-perturbed views of the same images
        - labels: ``(B,)`` integer class labels
        - domains: ``(B,)`` integer domain (hospital) ids
        - output: scalar
    """

    def __init__(
        self,
        temperature: float = 0.1,
        cross_domain_weight: float = 2.0,
        invariance_weight: float = 1.0,
    ) -> None:
        super().__init__()
        check_temperature(temperature)
        _check_weight("cross_domain_weight", cross_domain_weight, allow_zero=False)
        _check_weight("invariance_weight", invariance_weight, allow_zero=True)
        self.temperature = float(temperature)
        self.cross_domain_weight = float(cross_domain_weight)
        self.invariance_weight = float(invariance_weight)
        self.last_terms: dict[str, float] = {}

    def forward_terms(
        self, z: Tensor, z_aug: Tensor, labels: Tensor, domains: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss and its terms ``{"supcon": ..., "invariance": ...}`` (scalars, with graphs)."""
        if z.ndim != 2 or z.shape[0] < 1:
            raise ValueError(f"z must have shape (B, D) with B >= 1, got {tuple(z.shape)}")
        if z_aug.shape != z.shape:
            raise ValueError(
                f"z_aug must have the shape of z {tuple(z.shape)}, got {tuple(z_aug.shape)}"
            )
        if not (z.dtype.is_floating_point and z_aug.dtype.is_floating_point):
            raise ValueError(f"z and z_aug must be floating point, got {z.dtype} and {z_aug.dtype}")
        b = z.shape[0]
        _check_ids("labels", labels, b)
        _check_ids("domains", domains, b)
        positives, weights = cci_masks(
            labels.to(z.device), domains.to(z.device), self.cross_domain_weight
        )
        supcon = masked_info_nce(
            torch.cat([z, z_aug]), positives, temperature=self.temperature, weights=weights
        )
        cos = F.cosine_similarity(z.to(supcon.dtype), z_aug.to(supcon.dtype), dim=-1)
        invariance = self.invariance_weight * (1.0 - cos).mean()
        terms = {"supcon": supcon, "invariance": invariance}
        self.last_terms = {name: float(value.detach()) for name, value in terms.items()}
        return supcon + invariance, terms

    def forward(self, z: Tensor, z_aug: Tensor, labels: Tensor, domains: Tensor) -> Tensor:
        loss, _ = self.forward_terms(z, z_aug, labels, domains)
        return loss

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, cross_domain_weight={self.cross_domain_weight}, "
            f"invariance_weight={self.invariance_weight}"
        )
