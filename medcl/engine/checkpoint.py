"""Checkpoints that survive a kill: atomic writes, rng states, a sha256 sidecar, keep-last-K.

A checkpoint is one ``torch.save`` file holding the model (unwrapped from DDP), optimizer,
scheduler and scaler states, the step and epoch, the resolved ``config`` and an ``arch`` name, the
random-generator states of every process (so a resumed run draws the same numbers), and a free
``extra`` dict. It is written to a temporary file and moved into place with ``os.replace``, so a
reader sees either the previous checkpoint or the complete new one; ``<file>.sha256`` beside it
records the file's digest for provenance and is checked on load.

Files written by the trainer are named ``ckpt_step{N:08d}.pt``; :func:`latest_checkpoint` picks
the highest step and ignores temporary files.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import pickle
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from medcl.engine.distributed import unwrap_model
from medcl.engine.seed import get_rng_state, set_rng_state
from medcl.errors import InvalidInputError

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "medcl-checkpoint"
CHECKPOINT_VERSION = 1
_CKPT_RE = re.compile(r"^ckpt_step(\d+)\.pt$")
_TMP_SUFFIX = ".tmp"
_MAX_LISTED = 8


class Stateful(Protocol):
    """Anything with ``state_dict`` / ``load_state_dict`` (optimizer, scheduler, scaler)."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state_dict: Any, /) -> Any: ...


@dataclass(frozen=True)
class SavedCheckpoint:
    """Where a checkpoint went and the sha256 of its bytes."""

    path: Path
    sha256: str


def checkpoint_name(step: int) -> str:
    """File name the trainer uses for the checkpoint after ``step`` optimizer steps."""
    return f"ckpt_step{step:08d}.pt"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)``, fsync, then move the file onto ``path`` in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{_TMP_SUFFIX}")
    try:
        write(tmp)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: Stateful | None = None,
    scheduler: Stateful | None = None,
    scaler: Stateful | None = None,
    step: int,
    epoch: int = 0,
    config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    arch: str | None = None,
    rng_states: list[dict[str, Any]] | None = None,
) -> SavedCheckpoint:
    """Write a checkpoint atomically and its ``.sha256`` sidecar.

    Args:
        path: destination file.
        model: saved unwrapped (no ``module.`` prefix from DDP).
        optimizer, scheduler, scaler: saved through their ``state_dict()`` when given.
        step, epoch: training progress.
        config: the resolved config (plain types), saved for provenance.
        extra: anything else (plain types and tensors).
        arch: architecture name; the model's class name by default.
        rng_states: generator states per rank (from :func:`~medcl.engine.seed.get_rng_state`);
            this process's states by default.
    """
    path = Path(path)
    net = unwrap_model(model)
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": arch or type(net).__name__,
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "step": int(step),
        "epoch": int(epoch),
        "config": dict(config or {}),
        "extra": dict(extra or {}),
        "rng": rng_states if rng_states is not None else [get_rng_state()],
        "torch_version": str(torch.__version__),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    _atomic_write(path, lambda tmp: torch.save(payload, tmp))
    sha = file_sha256(path)
    sidecar = path.with_name(path.name + ".sha256")
    _atomic_write(sidecar, lambda tmp: tmp.write_text(f"{sha}  {path.name}\n", encoding="utf-8"))
    logger.info("saved checkpoint %s (step %d, sha256 %s)", path, step, sha[:12])
    return SavedCheckpoint(path=path, sha256=sha)


def _short(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return f"[{shown}{', ...' if len(items) > _MAX_LISTED else ''}] ({len(items)})"


def _match_model_state(
    path: Path, model: nn.Module, state: Mapping[str, torch.Tensor], strict: bool
) -> dict[str, torch.Tensor]:
    """Check ``state`` against ``model``; raise (strict) or drop (non-strict) what does not fit."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches (checkpoint vs model) {_short(shapes)}")
    if problems and strict:
        raise InvalidInputError(path, "checkpoint does not match the model: " + "; ".join(problems))
    if problems:
        logger.warning("%s: loading what matches; %s", path, "; ".join(problems))
    bad = {s.split(" ", 1)[0] for s in shapes}
    return {k: v for k, v in state.items() if k in own and k not in bad}


def read_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint file without applying it to anything.

    Raises:
        InvalidInputError: the file is missing, truncated, corrupt, not a medcl checkpoint, or its
            bytes do not match its ``.sha256`` sidecar.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(path, "checkpoint file not found")
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file():
        expected = sidecar.read_text(encoding="utf-8").split()[:1]
        actual = file_sha256(path)
        if expected and expected[0] != actual:
            raise InvalidInputError(
                path,
                f"sha256 {actual[:12]}... does not match {sidecar.name} ({expected[0][:12]}...)",
            )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, OSError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        unsafe = [line for line in lines if line.startswith("WeightsUnpickler error")]
        if unsafe:
            # Only tensors and plain values are loaded: a pickled object could run code.
            raise InvalidInputError(
                path, f"holds objects other than tensors and plain values: {unsafe[0]}"
            ) from None
        first = lines[0] if lines else type(exc).__name__
        raise InvalidInputError(
            path, f"not a readable checkpoint (truncated or corrupt file?): {first}"
        ) from None
    if not isinstance(payload, dict) or "model" not in payload:
        raise InvalidInputError(path, "not a medcl checkpoint (no 'model' entry)")
    return payload


#: config keys (their last dotted part) that may change between a run and its resumption: how
#: long to train, how often to log or save, where and how fast, never what is computed
RESUMABLE_KEYS = frozenset(
    {
        "max_steps",
        "steps",
        "log_every",
        "ckpt_every",
        "keep_last",
        "resume",
        "progress",
        "tensorboard",
        "device",
        "num_workers",
        "out_dir",
    }
)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: value}


def _plain(value: Any) -> Any:
    """JSON-normal form, so a tuple equals a list and a path its string."""
    return json.loads(json.dumps(value, default=str))


def config_differences(
    stored: Mapping[str, Any],
    current: Mapping[str, Any],
    ignore: Collection[str] = RESUMABLE_KEYS,
) -> list[tuple[str, Any, Any]]:
    """``(dotted key, stored value, current value)`` for every setting that differs.

    Nested mappings are compared key by key (``loss``, ``data.path``, ``train.precision``);
    keys whose last part is in ``ignore`` are skipped; a key present on one side only counts
    as a difference (its missing value is ``None``).
    """
    a, b = _flatten(_plain(dict(stored))), _flatten(_plain(dict(current)))
    keys = sorted(set(a) | set(b))
    return [
        (k, a.get(k), b.get(k))
        for k in keys
        if k.rsplit(".", 1)[-1] not in ignore and a.get(k) != b.get(k)
    ]


def check_resume_config(
    path: str | os.PathLike[str],
    stored: Mapping[str, Any] | None,
    current: Mapping[str, Any],
    ignore: Collection[str] = RESUMABLE_KEYS,
) -> None:
    """Refuse to resume from ``path`` when its stored config differs from ``current``.

    Raises:
        InvalidInputError: naming each differing setting with its stored and current value.
    """
    if not stored:
        logger.warning("%s stores no config: cannot check that it fits this run", path)
        return
    diffs = config_differences(stored, current, ignore)
    if diffs:
        shown = "; ".join(
            f"{k}: {old!r} stored, {new!r} now" for k, old, new in diffs[:_MAX_LISTED]
        )
        more = f" (and {len(diffs) - _MAX_LISTED} more)" if len(diffs) > _MAX_LISTED else ""
        raise InvalidInputError(
            path,
            f"was trained with other settings ({shown}{more}); resuming would mix two runs: "
            "give this run another name or output folder, or set train.resume=false to "
            "start it over there",
        )


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    optimizer: Stateful | None = None,
    scheduler: Stateful | None = None,
    scaler: Stateful | None = None,
    map_location: Any = "cpu",
    strict: bool = True,
    restore_rng: bool = False,
    rank: int = 0,
    expected_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Load a checkpoint into the given objects and return its whole content.

    Args:
        path: checkpoint file.
        model: receives the weights (a DDP wrapper is unwrapped); keys must match when
            ``strict``, otherwise what matches is loaded and the rest logged.
        optimizer, scheduler, scaler: restored when given and saved.
        map_location: passed to ``torch.load``.
        restore_rng: also restore the generator states saved for ``rank`` (rank 0's when the
            checkpoint has fewer).
        expected_config: when given, the stored config must agree with it (see
            :func:`check_resume_config`) before anything is loaded.

    Raises:
        InvalidInputError: unreadable file, a stored config other than ``expected_config``, or
            (strict) keys or shapes that do not match, listed.
    """
    path = Path(path)
    payload = read_checkpoint(path, map_location)
    if expected_config is not None:
        check_resume_config(path, payload.get("config"), expected_config)
    if model is not None:
        net = unwrap_model(model)
        state = _match_model_state(path, net, payload["model"], strict)
        net.load_state_dict(state, strict=strict)
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        if obj is None:
            continue
        if payload.get(name) is None:
            raise InvalidInputError(path, f"checkpoint has no {name} state to restore")
        try:
            obj.load_state_dict(payload[name])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise InvalidInputError(path, f"{name} state does not fit: {exc}") from None
    if restore_rng:
        set_rng_state(rng_for_rank(payload, rank))
    logger.info("loaded checkpoint %s (step %s)", path, payload.get("step"))
    return payload


def rng_for_rank(payload: Mapping[str, Any], rank: int, key: str = "rng") -> dict[str, Any]:
    """The generator states saved for ``rank`` (rank 0's if the run had fewer processes)."""
    states = payload[key]
    if rank < len(states):
        return dict(states[rank])
    logger.warning(
        "checkpoint has rng states for %d processes; rank %d uses rank 0's", len(states), rank
    )
    return dict(states[0])


def list_checkpoints(folder: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``ckpt_step*.pt`` in ``folder``, by increasing step."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = _CKPT_RE.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """The checkpoint with the highest step in ``folder`` (temporary files ignored), or None."""
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def prune_checkpoints(folder: str | os.PathLike[str], keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest checkpoints (0 keeps all) and stale temp files.

    Returns:
        The checkpoint files deleted.
    """
    if keep_last < 0:
        raise ValueError(f"keep_last must be >= 0, got {keep_last}")
    folder = Path(folder)
    removed: list[Path] = []
    found = list_checkpoints(folder)
    if keep_last > 0:
        for _, path in found[:-keep_last]:
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".sha256").unlink(missing_ok=True)
            removed.append(path)
    if folder.is_dir():
        for stale in folder.glob(f".ckpt_step*{_TMP_SUFFIX}"):
            stale.unlink(missing_ok=True)
    if removed:
        logger.debug("pruned %d old checkpoints in %s", len(removed), folder)
    return removed
