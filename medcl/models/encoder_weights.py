"""Encoder weights on disk: verified loading of local files and medcl's own encoder format.

Silently unloaded weights spoil many reproductions, so :func:`load_verified_weights` counts what
matched and refuses a file that fills less than ``min_fraction`` of the model's parameters; the
file's sha256 and the match counts go into ``encoder.provenance``.

The medcl encoder file written by :func:`save_encoder` is one ``torch.save`` dictionary::

    {"format": "medcl-encoder", "version": 1,
     "encoder": "timm:resnet18",        # base registry name, rebuilt offline
     "build_kwargs": {...},             # extra builder arguments, e.g. {"img_size": 64}
     "embed_dim": 512,
     "state_dict": {...},               # the backbone's tensors (no wrapper prefix)
     "transform": {"mean", "std", "size", "interpolation", "crop_pct"},
     "meta": {"medcl_version", "created", ...}}  # free: job, config, step...

``create_encoder("medcl:/path/enc.pt")`` reads it back.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medcl.engine.checkpoint import file_sha256
from medcl.errors import InvalidInputError
from medcl.models.encoder_base import Encoder

logger = logging.getLogger(__name__)

ENCODER_FORMAT = "medcl-encoder"
ENCODER_VERSION = 1
MIN_MATCHED_FRACTION = 0.9
# wrappers that training code puts in front of a backbone's keys (DDP, CLIP, our Encoder, ...)
_PREFIXES = ("module.", "_orig_mod.", "visual.", "backbone.", "model.", "encoder.", "trunk.")
_NESTED = ("state_dict", "model", "module", "state_dict_ema", "model_ema")
_SHOWN = 5


@dataclass
class StateMatch:
    """How a state dict lines up with a model: what loads and what does not."""

    matched: dict[str, torch.Tensor]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]
    fraction: float  # matched parameter elements / all parameter elements of the model
    notes: list[str] = field(default_factory=list)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a tensor dictionary from a ``.safetensors`` or torch file, unwrapping containers.

    Accepts plain state dicts, timm training checkpoints (``{"state_dict": ...}``), open_clip
    checkpoints, engine checkpoints (``{"model": ...}``) and medcl encoder files. Only tensors and
    plain values are unpickled (``weights_only=True``; argparse namespaces allowed).

    Raises:
        InvalidInputError: missing, unreadable or without any tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(p, "weights file not found")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            payload: Any = load_file(str(p), device="cpu")
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch and safetensors raise many types
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise InvalidInputError(p, f"not a readable weights file ({first[:160]})") from None
    while isinstance(payload, Mapping):
        inner = next((payload[k] for k in _NESTED if isinstance(payload.get(k), Mapping)), None)
        if inner is None:
            break
        payload = inner
    tensors = (
        {str(k): v for k, v in payload.items() if isinstance(v, torch.Tensor)}
        if isinstance(payload, Mapping)
        else {}
    )
    if not tensors:
        raise InvalidInputError(p, "holds no tensors (not a state dict or checkpoint)")
    return tensors


def _fits(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> int:
    return sum(1 for k, v in state.items() if k in own and own[k].shape == v.shape)


def match_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> StateMatch:
    """Line ``state`` up with ``model``, stripping wrapper prefixes when that matches more keys.

    Each prefix in ``module.``, ``visual.`` (a full CLIP checkpoint; the text tower is dropped),
    ``backbone.`` ... is tried repeatedly; a strip is kept only if more keys then fit.
    """
    own = model.state_dict()
    best: dict[str, torch.Tensor] = dict(state)
    notes: list[str] = []
    improved = True
    while improved:
        improved = False
        for prefix in _PREFIXES:
            cand = {k[len(prefix) :]: v for k, v in best.items() if k.startswith(prefix)}
            if cand and _fits(cand, own) > _fits(best, own):
                best, improved = cand, True
                notes.append(f"stripped '{prefix}'")
    matched = {k: v for k, v in best.items() if k in own and own[k].shape == v.shape}
    mismatched = sorted(k for k in best if k in own and own[k].shape != best[k].shape)
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    hit = sum(p.numel() for k, p in params.items() if k in matched)
    return StateMatch(
        matched=matched,
        missing=sorted(set(own) - set(matched) - set(mismatched)),
        unexpected=sorted(set(best) - set(own)),
        mismatched=mismatched,
        fraction=hit / total if total else 1.0,
        notes=notes,
    )


def _short(keys: list[str]) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > _SHOWN else ""
    return "[" + ", ".join(keys[:_SHOWN]) + more + "]"


def load_verified_weights(
    encoder: Encoder, path: str | Path, *, min_fraction: float = MIN_MATCHED_FRACTION
) -> dict[str, Any]:
    """Load the weights in ``path`` into ``encoder.backbone``, refusing files that do not fit.

    Returns the provenance (also stored in ``encoder.provenance``): ``source`` (the file),
    ``sha256``, ``matched_keys``, ``total_keys``, ``matched_fraction`` (of parameter elements),
    the keys left missing or mismatched, and how many tensors of the file went unused (a full
    CLIP checkpoint's text tower, a classifier head).

    Raises:
        InvalidInputError: unreadable file, or fewer than ``min_fraction`` of the parameters
            matched (typically a file for another architecture).
    """
    p = Path(path)
    state = read_state_dict(p)
    m = match_state_dict(encoder.backbone, state)
    n_own = len(encoder.backbone.state_dict())
    if m.fraction < min_fraction or not m.matched:
        details = [f"missing {_short(m.missing)}"] if m.missing else []
        if m.mismatched:
            details.append(f"shape mismatches {_short(m.mismatched)}")
        if m.unexpected:
            details.append(f"unexpected {_short(m.unexpected)}")
        raise InvalidInputError(
            p,
            f"weights do not fit encoder '{encoder.name}': only {m.fraction:.0%} of its "
            f"parameters matched ({len(m.matched)} of {n_own} tensors, {min_fraction:.0%} "
            f"needed); is this a file for another architecture? {'; '.join(details)}",
        )
    encoder.backbone.load_state_dict(m.matched, strict=False)
    if m.missing or m.mismatched:
        logger.warning(
            "%s: %d of %d tensors loaded into %s; missing %s, mismatched %s",
            p,
            len(m.matched),
            n_own,
            encoder.name,
            _short(m.missing),
            _short(m.mismatched),
        )
    provenance: dict[str, Any] = {
        "source": str(p),
        "sha256": file_sha256(p),
        "matched_keys": len(m.matched),
        "total_keys": n_own,
        "matched_fraction": m.fraction,
        "missing_keys": m.missing,
        "mismatched_keys": m.mismatched,
        "unused_tensors": len(state) - len(m.matched),
    }
    encoder.provenance = provenance
    logger.info(
        "loaded %s into %s (%d/%d tensors, sha256 %s)",
        p,
        encoder.name,
        len(m.matched),
        n_own,
        provenance["sha256"][:12],
    )
    return provenance


_PLAIN = (bool, int, float, str, type(None))


def _is_plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, list | tuple):
        return all(_is_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def save_encoder(encoder: Encoder, path: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``encoder`` as a medcl encoder file (format in the module docstring), atomically.

    ``create_encoder(f"medcl:{path}")`` rebuilds it offline. ``meta`` holds plain values only
    (numbers, strings, lists, dicts), so the file loads with ``weights_only=True``.

    Raises:
        ValueError: ``meta`` or the encoder's build arguments hold non-plain values.
    """
    from medcl import __version__

    for label, value in (("meta", dict(meta or {})), ("build_kwargs", encoder.build_kwargs)):
        if not _is_plain(value):
            raise ValueError(f"{label} must hold plain values only (numbers, str, lists, dicts)")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": ENCODER_FORMAT,
        "version": ENCODER_VERSION,
        "encoder": encoder.base_name,
        "build_kwargs": dict(encoder.build_kwargs),
        "embed_dim": encoder.embed_dim,
        "state_dict": {k: v.detach().cpu() for k, v in encoder.backbone.state_dict().items()},
        "transform": encoder.spec.to_dict(),
        "meta": {
            "medcl_version": __version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            **dict(meta or {}),
        },
    }
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        torch.save(payload, tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("saved encoder %s (%s) to %s", encoder.base_name, encoder.name, target)
    return target


def read_encoder_file(path: str | Path) -> dict[str, Any]:
    """Read and check a file written by :func:`save_encoder`.

    Raises:
        InvalidInputError: missing, unreadable, or not a medcl encoder file.
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(p, "encoder file not found")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise InvalidInputError(p, f"not a readable encoder file ({first[:160]})") from None
    if not isinstance(payload, dict) or payload.get("format") != ENCODER_FORMAT:
        raise InvalidInputError(
            p, "not a medcl encoder file (write one with medcl.models.encoders.save_encoder)"
        )
    if payload.get("version", 0) > ENCODER_VERSION:
        raise InvalidInputError(
            p, f"encoder file version {payload['version']} is newer than this medcl supports"
        )
    missing = [k for k in ("encoder", "embed_dim", "state_dict", "transform") if k not in payload]
    if missing:
        raise InvalidInputError(p, f"encoder file lacks {', '.join(missing)}")
    return payload
