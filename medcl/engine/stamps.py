"""Settings stamps: a stage that skips finished work first checks it was made the same way.

A stage writes the settings that change its output (encoder, weights sha256, image size,
transform, precision, loss, data...) as ``settings.json`` into its folder. On a re-run,
:func:`check_stamp` compares them with the current ones and refuses the folder, naming every
differing setting with both values, instead of reporting stale outputs as finished; or a stage
names its folder by :func:`settings_digest`, so other settings get a new folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medcl.errors import InvalidInputError

logger = logging.getLogger(__name__)

STAMP_FILE = "settings.json"
_SHOWN = 6
#: config keys (last dotted part) that never change a stage's output: where and how fast it runs
RUNTIME_KEYS = frozenset(
    {
        "num_workers",
        "device",
        "progress",
        "tensorboard",
        "log_every",
        "ckpt_every",
        "keep_last",
        "resume",
        "out_dir",
    }
)


def output_settings(config: Mapping[str, Any], drop: frozenset[str] = RUNTIME_KEYS) -> Any:
    """``config`` (nested, plain) without the keys in ``drop``: what a stamp should hold."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in drop}
        return value

    return strip(plain_settings(config))


def plain_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` in JSON-normal form (tuples as lists, paths as strings, sorted keys)."""
    out: dict[str, Any] = json.loads(json.dumps(dict(settings), sort_keys=True, default=str))
    return out


def settings_digest(settings: Mapping[str, Any], length: int = 8) -> str:
    """The first ``length`` hex digits of the sha256 of the settings' sorted JSON."""
    blob = json.dumps(plain_settings(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def stamp_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """``"key: stored-value stored, current-value now; ..."`` for each differing (dotted) key."""
    a, b = _flatten(plain_settings(stored)), _flatten(plain_settings(current))
    diffs = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    shown = "; ".join(f"{k}: {a.get(k)!r} stored, {b.get(k)!r} now" for k in diffs[:_SHOWN])
    return shown + (f" (and {len(diffs) - _SHOWN} more)" if len(diffs) > _SHOWN else "")


def check_stamp(
    folder: Path, settings: Mapping[str, Any], *, has_outputs: bool, write: bool = True
) -> None:
    """Refuse ``folder`` unless its stamp equals ``settings``; write the stamp when absent.

    Args:
        folder: the stage folder.
        settings: what changes the stage's output, plain values.
        has_outputs: whether the folder already holds outputs; without a stamp those cannot be
            shown to match and are refused too.
        write: write the stamp when absent (``False`` on all but one process of a run).

    Raises:
        InvalidInputError: a stamp with other settings (each named with both values), an
            unreadable stamp, or outputs without a stamp.
    """
    path = folder / STAMP_FILE
    current = plain_settings(settings)
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidInputError(path, f"unreadable settings stamp: {exc}") from None
        if stored != current:
            raise InvalidInputError(
                folder,
                f"holds outputs made with other settings ({stamp_differences(stored, current)});"
                " move or delete it, or use another name, to run with these settings",
            )
        return
    if has_outputs:
        raise InvalidInputError(
            folder,
            f"holds outputs but no {STAMP_FILE} recording how they were made; move or delete "
            "it to run again",
        )
    if write:
        write_stamp(folder, current)


def write_stamp(folder: Path, settings: Mapping[str, Any]) -> Path:
    """Write ``settings`` as ``folder/settings.json`` atomically; returns the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STAMP_FILE
    tmp = folder / f".{STAMP_FILE}.tmp"
    tmp.write_text(json.dumps(plain_settings(settings), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path
