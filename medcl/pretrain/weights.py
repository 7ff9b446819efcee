"""Pretrained UNet weights on disk: ``{"arch", "state_dict", "meta"}`` in one file, atomically.

The engine's step checkpoints (``ckpt_step*.pt``) hold optimizer and RNG state for resuming;
the file written here is what fine-tuning starts from. :func:`load_unet_weights` accepts both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from medcl import __version__
from medcl.engine.checkpoint import file_sha256
from medcl.errors import InvalidInputError
from medcl.models.unet import UNet


def save_unet_weights(model: UNet, path: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``model``'s architecture and weights to ``path`` (temp file, then rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "arch": model.arch,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": {"medcl_version": __version__, **dict(meta or {})},
    }
    tmp = target.with_name(target.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(target)
    return target


def read_unet_weights(path: str | Path) -> dict[str, Any]:
    """Load a weights file or an engine checkpoint as ``{"arch"?, "state_dict", "meta"}``.

    Raises:
        InvalidInputError: missing, empty, truncated or foreign files.
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(p, "checkpoint file not found")
    if p.stat().st_size == 0:
        raise InvalidInputError(p, "checkpoint file is empty (0 bytes)")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidInputError(p, f"not a readable PyTorch checkpoint ({first[:160]})") from None
    if not isinstance(payload, dict):
        raise InvalidInputError(p, "not a medcl checkpoint (expected a dictionary)")
    if "state_dict" in payload:
        return {
            "arch": payload.get("arch"),
            "state_dict": payload["state_dict"],
            "meta": payload.get("meta", {}),
        }
    if "model" in payload:  # an engine step checkpoint
        extra = payload.get("extra") or {}
        return {
            "arch": extra.get("unet_arch"),
            "state_dict": payload["model"],
            "meta": {"step": payload.get("step")},
        }
    raise InvalidInputError(p, "not a medcl checkpoint (no 'state_dict' or 'model' entry)")


def load_unet_weights(
    model: UNet, path: str | Path, parts: Sequence[str] = ("encoder", "decoder")
) -> dict[str, Any]:
    """Load ``parts`` of the weights in ``path`` into ``model``; returns provenance.

    Raises:
        InvalidInputError: unreadable file, or a checkpoint from another architecture (the
            message lists what differs).
    """
    payload = read_unet_weights(path)
    state: dict[str, Any] = {"state_dict": payload["state_dict"]}
    if payload.get("arch") is not None:
        state["arch"] = payload["arch"]
    loaded = model.load_pretrained(state, parts=parts, source=str(path))
    return {
        "path": str(path),
        "sha256": file_sha256(Path(path)),
        "parts": list(parts),
        "keys_loaded": len(loaded),
        "meta": payload.get("meta", {}),
    }
