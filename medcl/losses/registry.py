"""Contrastive losses by name: ``create_loss("ntxent", temperature=0.2)``.

Every registered loss is reachable from a job config, through these functions only:

* :data:`LOSSES` (``dense``, ``ntxent``, ``supcon``): ``medcl pretrain patch`` picks ``ntxent``
  or ``supcon`` with ``loss:`` (+ ``loss_kwargs``); ``dense`` is on :data:`LOCAL_LOSSES` too;
* :data:`LOCAL_LOSSES` (``local``, ``dense``): the local stage of ``medcl pretrain volume``
  (``local_stage.loss``), on aligned decoder feature maps;
* the global partition losses of volume pretraining (``gr``, ``gd-``, ``gd``) keep their own
  registry (:data:`medcl.losses.partition.GLOBAL_LOSSES`), since they take partition and volume
  ids; ``global_stage.loss`` picks one.

Each loss class says what its ``forward`` takes in ``inputs`` (:data:`LossInputs`), so a job
can refuse a loss it cannot feed with a clear message.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import nn

from medcl.losses.dense import DenseLocalLoss
from medcl.losses.local import LOCAL_LOSSES
from medcl.losses.ntxent import NTXentLoss
from medcl.losses.supcon import SupConLoss
from medcl.registry import Registry

#: ``"pair"``: ``(z1, z2)`` embeddings of two views; ``"views"``: ``(B, V, D)`` embeddings and
#: optional labels; ``"feature_maps"``: ``(f1, f2)`` aligned ``(B, C, H, W)`` feature maps.
LossInputs = Literal["pair", "views", "feature_maps"]

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


def loss_inputs(name: str) -> str:
    """What the loss registered as ``name`` takes (:data:`LossInputs`)."""
    builder: Any = LOSSES.get(name)  # the registered classes carry ``inputs``
    return str(builder.inputs)


def create_local_loss(name: str, **kwargs: object) -> nn.Module:
    """Build the local loss ``name`` of the volume local stage (``"local"`` or ``"dense"``).

    Raises:
        ValueError: unknown name (listing the valid ones) or options the loss does not take.
    """
    return LOCAL_LOSSES.create(name, **kwargs)


def list_local_losses() -> list[str]:
    """The registered local loss names, sorted."""
    return LOCAL_LOSSES.names()
