"""Saving and loading trained MIL models with everything needed to rebuild them.

A checkpoint is a ``torch.save`` dict: ``format``, ``aggregator`` (name), ``aggregator_kwargs``,
``in_dim``, ``n_classes``, ``class_names`` (index = class label), ``config`` (the training config
as a plain dict) and ``state_dict``. It loads with ``weights_only=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from medcl.errors import InvalidInputError
from medcl.mil.aggregators import MILAggregator, create_aggregator
from medcl.mil.base import aggregator_spec

CHECKPOINT_FORMAT = "medcl-mil/1"
_META_KEYS = ("aggregator", "aggregator_kwargs", "in_dim", "n_classes", "class_names")


def save_mil_model(
    path: str | PathLike[str],
    model: nn.Module,
    cfg: BaseModel | dict[str, Any] | None,
    class_names: Sequence[str],
) -> Path:
    """Write ``model`` with its rebuild information to ``path`` (parents created).

    The aggregator name and options come from the model (set by ``create_aggregator``), else
    from ``cfg.aggregator`` / ``cfg.aggregator_kwargs``.

    Raises:
        ValueError: ``class_names`` does not have one name per model output.
    """
    cfg_dict: dict[str, Any] = (
        cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else dict(cfg or {})
    )
    spec = aggregator_spec(model)
    name = spec["name"] or cfg_dict.get("aggregator")
    kwargs = spec["kwargs"] if spec["name"] else dict(cfg_dict.get("aggregator_kwargs") or {})
    if not name:
        raise ValueError("cannot tell the aggregator name of this model; pass cfg.aggregator")
    n_classes = int(getattr(model, "n_classes", len(class_names)))
    names = [str(c) for c in class_names]
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} class names for a model with {n_classes} classes")
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "aggregator": str(name),
        "aggregator_kwargs": kwargs,
        "in_dim": int(getattr(model, "in_dim")),  # noqa: B009
        "n_classes": n_classes,
        "class_names": names,
        "config": cfg_dict,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(target)
    return target


def load_mil_model(
    path: str | PathLike[str], device: torch.device | str = "cpu"
) -> tuple[MILAggregator, dict[str, Any]]:
    """Rebuild the model saved at ``path`` (in eval mode) and return it with its metadata.

    The metadata is the checkpoint without ``state_dict``: ``aggregator``,
    ``aggregator_kwargs``, ``in_dim``, ``n_classes``, ``class_names``, ``config``, ``format``.

    Raises:
        InvalidInputError: missing file, not a torch file, or not a medcl MIL checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(p, "MIL model file not found")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged or foreign files
        raise InvalidInputError(p, f"cannot load the model file ({exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InvalidInputError(p, "not a medcl MIL model (expected one from `medcl mil train`)")
    missing = [k for k in (*_META_KEYS, "state_dict") if k not in ckpt]
    if missing:
        raise InvalidInputError(p, f"MIL model lacks {', '.join(missing)}")
    try:
        model = create_aggregator(
            ckpt["aggregator"], ckpt["in_dim"], ckpt["n_classes"], **ckpt["aggregator_kwargs"]
        )
        model.load_state_dict(ckpt["state_dict"])
    except (ValueError, RuntimeError) as exc:
        raise InvalidInputError(p, f"cannot rebuild the MIL model ({exc})") from None
    model.to(device).eval()
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return model, meta
