"""The patch contrastive losses by name: ``create_loss("ntxent", temperature=0.2)``.

The global partition losses of volume pretraining keep their own registry
(:data:`medcl.losses.partition.GLOBAL_LOSSES`), since they take partition and volume ids.
"""

from __future__ import annotations

from torch import nn

from medcl.losses.dense import DenseLocalLoss
from medcl.losses.ntxent import NTXentLoss
from medcl.losses.supcon import SupConLoss
from medcl.registry import Registry

LOSSES: Registry[nn.Module] = Registry("loss")
LOSSES.register("ntxent")(NTXentLoss)
LOSSES.register("supcon")(SupConLoss)
LOSSES.register("dense")(DenseLocalLoss)


def create_loss(name: str, **kwargs: object) -> nn.Module:
    """Build the loss registered as ``name`` (``ValueError`` listing the valid names otherwise).

    Args:
        name: one of :func:`list_losses` (``"dense"``, ``"ntxent"``, ``"supcon"``).
        **kwargs: the loss's constructor arguments.
    """
    return LOSSES.create(name, **kwargs)


def list_losses() -> list[str]:
    """The registered loss names, sorted."""
    return LOSSES.names()
