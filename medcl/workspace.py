"""Where things live: the workspace folder, the real-data root, and safe path resolution.

Everything a run makes goes under one workspace (``--workspace``, ``$MEDCL_WORKSPACE`` or
``./medcl-workspace``), each stage in a sub-folder whose name encodes its settings, so a re-run
with other settings never overwrites and a finished stage can be found and skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from medcl.errors import InvalidInputError, MedclError

DEFAULT_WORKSPACE = "medcl-workspace"
_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def workspace_root(path: str | Path | None = None) -> Path:
    """The workspace folder: ``path``, else ``$MEDCL_WORKSPACE``, else ``./medcl-workspace``."""
    value = path or os.environ.get("MEDCL_WORKSPACE") or DEFAULT_WORKSPACE
    return Path(value).expanduser().resolve()


def data_root(path: str | Path | None = None, *, required: bool = False) -> Path | None:
    """The real sample-data root: ``path`` (``--data-root``), else ``$MEDCL_DATA``; ``None`` when
    neither is set.

    The one place a data root is resolved: every command passes its ``--data-root`` through here,
    and every library entry point calls it again on what it was given (a no-op on a resolved
    root), so a missing folder is refused with the same message whichever way a job starts.

    Raises:
        MedclError: when the folder named does not exist, or none is set and ``required``.
    """
    value = path or os.environ.get("MEDCL_DATA")
    if not value:
        if required:
            raise MedclError("no data root: pass --data-root or set MEDCL_DATA")
        return None
    root = Path(value).expanduser().resolve()
    if not root.is_dir():
        raise InvalidInputError(root, "data root is not a folder")
    return root


def data_path(path: str | Path, root: str | Path | None, *, must_exist: bool = True) -> Path:
    """A path from a config: itself when absolute, else under the data ``root`` (as given when
    there is no root).

    Args:
        path: the configured file or folder.
        root: the data root (from :func:`data_root`), or ``None``.
        must_exist: refuse a path that names nothing, saying where relative paths are read.

    Raises:
        InvalidInputError: ``must_exist`` and nothing is at the resolved path.
    """
    p = Path(path).expanduser()
    out = p if p.is_absolute() or root is None else Path(root) / p
    if must_exist and not out.exists():
        where = (
            f"relative paths are read under the data root {root}"
            if root is not None
            else "relative paths are read from the current folder; pass --data-root or set "
            "MEDCL_DATA to read them elsewhere"
        )
        raise InvalidInputError(out, f"no such file or folder ({where})")
    return out


def slug(text: str, max_len: int = 80) -> str:
    """A file-name-safe form of ``text`` (letters, digits, ``. _ + -``)."""
    cleaned = _SAFE.sub("_", text).strip("._") or "item"
    return cleaned[:max_len]


def settings_name(settings: Mapping[str, object]) -> str:
    """Encode settings as a folder name, TRIDENT-style.

    ``{'mag': 20, 'px': 256}`` -> ``mag20_px256``.

    ``None`` values are left out; floats are written without trailing zeros.
    """
    parts = []
    for key, value in settings.items():
        if value is None:
            continue
        text = f"{value:g}" if isinstance(value, float) else str(value)
        parts.append(f"{key}{slug(text, 40)}")
    return "_".join(parts) or "default"


def settings_hash(payload: object) -> str:
    """8 hex digits of the SHA-256 of ``payload`` as canonical JSON: a folder-name suffix that
    changes whenever a setting that changes a stage's output does."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def stage_dir(root: str | Path, stage: str, name: str) -> Path:
    """``root/stage/name`` (created); ``name`` is made file-name-safe."""
    out = Path(root) / slug(stage) / slug(name)
    out.mkdir(parents=True, exist_ok=True)
    return out


def resolve_inside(root: str | Path, user_path: str | Path) -> Path:
    """Resolve ``user_path`` (relative to ``root`` or absolute) and refuse it outside ``root``.

    Symbolic links are resolved first, so a link pointing out of the root is refused too.

    Raises:
        InvalidInputError: when the resolved path is not inside ``root``.
    """
    base = Path(root).resolve()
    candidate = Path(user_path)
    target = (candidate if candidate.is_absolute() else base / candidate).resolve()
    if target != base and base not in target.parents:
        raise InvalidInputError(user_path, f"path is outside the allowed folder {base}")
    return target


def job_dir(
    out_dir: str | Path | None, workspace: str | Path | None, stage: str, name: str
) -> Path:
    """A job's output folder: ``out_dir`` when given, else ``<workspace>/<stage>/<name>``."""
    if out_dir:
        path = Path(out_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return stage_dir(workspace_root(workspace), stage, name)
