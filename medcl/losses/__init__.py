"""Contrastive losses: one masked InfoNCE core, the global partition losses, the local loss.

See :mod:`medcl.losses.contrastive` (the core), :mod:`medcl.losses.partition` (G^R, G^{D-}, G^D
of Chaitanya et al., NeurIPS 2020) and :mod:`medcl.losses.local` (the dense local loss).
"""

from __future__ import annotations

from medcl.losses.contrastive import (
    MaskedInfoNCELoss,
    info_nce_from_logits,
    masked_info_nce,
    ntxent_positive_mask,
)
from medcl.losses.local import LocalContrastiveLoss, pool_regions, region_axis
from medcl.losses.partition import (
    GLOBAL_LOSSES,
    GlobalGDLoss,
    GlobalGDMinusLoss,
    GlobalGRLoss,
    create_global_loss,
    list_global_losses,
    partition_masks,
    same_partition_other_volume,
)

__all__ = [
    "GLOBAL_LOSSES",
    "GlobalGDLoss",
    "GlobalGDMinusLoss",
    "GlobalGRLoss",
    "LocalContrastiveLoss",
    "MaskedInfoNCELoss",
    "create_global_loss",
    "info_nce_from_logits",
    "list_global_losses",
    "masked_info_nce",
    "ntxent_positive_mask",
    "partition_masks",
    "pool_regions",
    "region_axis",
    "same_partition_other_volume",
]
