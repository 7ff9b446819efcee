"""Import the predictions pipelines write (``predictions.jsonl``) into the review store.

One JSON object per line::

    {"case_key": "slide:cmu-1-small-region",   # stable unique id of the case
     "kind": "volume" | "slide" | "retrieval",
     "model": "abmil", "model_version": "fold0-1a2b3c4d",
     "site": "hospital or domain ('' when unknown; optional)",
     "label": "predicted label",
     "scores": {"label": probability, ...},
     "uncertainty": 0.37,          # in [0, 1]; optional: 1 - max(scores) when absent
     "created": "2025-01-31T12:00:00",        # optional ISO time
     "artifacts": {...}}           # by kind, see below

Artifacts (paths relative to the predictions file's folder, or absolute):

- volume: ``image`` (required), ``mask``, ``ground_truth`` (or null), ``labels`` {"1": "liver"},
  ``dice`` {"liver": 0.91} or null
- slide: ``slide`` (required), ``mpp`` (or null), ``thumbnail``, ``heatmap``, ``scores`` (HDF5 of
  coords + scores), ``top_tiles`` [paths]
- retrieval: ``query`` (required), ``true_label`` (or null), ``demonstrations`` [{"path", "label",
  "similarity", "domain"}], ``lmm_answer`` (or null), ``selector``

``(case_key, model, model_version)`` is unique: importing the same file twice adds nothing. A case
is created at its first prediction (status 'pending', version 0); a later model version adds a
prediction to the same case. Malformed lines are reported as ``file:line: problem`` and skipped;
the good lines are imported. Relative artifact paths are made absolute at import.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from medcl.errors import InvalidInputError
from medcl.review.auth import UserInfo, system_user
from medcl.review.db import KINDS, Case, Prediction, Store, add_audit, as_utc, utcnow
from medcl.review.errors import ReviewError

logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
_REQUIRED = ("case_key", "kind", "model", "model_version", "label")
_PATH_KEYS = {
    "volume": ("image", "mask", "ground_truth"),
    "slide": ("slide", "thumbnail", "heatmap", "heatmap_figure", "scores"),
    "retrieval": ("query",),
}
_MAIN_ARTIFACT = {"volume": "image", "slide": "slide", "retrieval": "query"}


@dataclass
class ImportResult:
    """Predictions created, skipped (already in the store), and ``file:line: problem`` errors."""

    created: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


def _absolute(value: Any, base: Path, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} must be a file path")
    return os.path.normpath(base / value.strip())


def _artifacts(kind: str, raw: Any, base: Path) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError("'artifacts' must be an object")
    out = dict(raw)
    main = _MAIN_ARTIFACT[kind]
    if not out.get(main):
        raise ValueError(f"{kind} artifacts need '{main}'")
    for key in _PATH_KEYS[kind]:
        if key in out:
            out[key] = _absolute(out[key], base, f"artifacts.{key}")
    if kind == "slide" and "top_tiles" in out:
        tiles = out["top_tiles"] or []
        if not isinstance(tiles, list):
            raise ValueError("artifacts.top_tiles must be a list of paths")
        out["top_tiles"] = [_absolute(t, base, "artifacts.top_tiles[]") for t in tiles]
    if kind == "retrieval" and "demonstrations" in out:
        demos = out["demonstrations"] or []
        if not isinstance(demos, list) or not all(isinstance(d, dict) for d in demos):
            raise ValueError("artifacts.demonstrations must be a list of objects")
        out["demonstrations"] = [
            {**d, "path": _absolute(d.get("path"), base, "demonstrations[].path")} for d in demos
        ]
    return out


def parse_record(obj: Any, base: Path) -> dict[str, Any]:
    """Check one predictions line and normalise it (absolute paths, uncertainty, created).

    Raises:
        ValueError: the problem, in words (the caller adds file and line).
    """
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in _REQUIRED if not isinstance(obj.get(k), str) or not obj[k].strip()]
    if missing:
        raise ValueError(f"missing or empty key(s) {', '.join(missing)}")
    kind = obj["kind"]
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)} (got '{kind}')")
    scores = obj.get("scores", {})
    if not isinstance(scores, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        for v in scores.values()
    ):
        raise ValueError("'scores' must map labels to numbers")
    uncertainty = obj.get("uncertainty")
    if uncertainty is None:
        if not scores:
            raise ValueError("no 'uncertainty' and no 'scores' to compute it from")
        uncertainty = 1.0 - max(float(v) for v in scores.values())
    if isinstance(uncertainty, bool) or not isinstance(uncertainty, int | float):
        raise ValueError("'uncertainty' must be a number")
    if not 0.0 <= float(uncertainty) <= 1.0:
        raise ValueError(f"'uncertainty' must be in [0, 1] (got {uncertainty})")
    site = obj.get("site") or ""
    if not isinstance(site, str):
        raise ValueError("'site' must be a string")
    created = utcnow()
    if obj.get("created") is not None:
        try:
            created = as_utc(datetime.fromisoformat(str(obj["created"])))
        except ValueError:
            raise ValueError(f"'created' is not an ISO time: {obj['created']!r}") from None
    return {
        "case_key": obj["case_key"].strip(),
        "kind": kind,
        "model": obj["model"].strip(),
        "model_version": obj["model_version"].strip(),
        "site": site.strip(),
        "label": obj["label"],
        "scores": {str(k): float(v) for k, v in scores.items()},
        "uncertainty": float(uncertainty),
        "created": created,
        "artifacts": _artifacts(kind, obj.get("artifacts", {}), base),
    }


def _parse_lines(text: str, source: str, base: Path) -> tuple[list[dict[str, Any]], list[str]]:
    records: list[dict[str, Any]] = []
    errors: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"{source}:{lineno}: not valid JSON ({exc.msg})")
            continue
        try:
            rec = parse_record(obj, base)
        except ValueError as exc:
            errors.append(f"{source}:{lineno}: {exc}")
            continue
        rec["line"] = lineno
        records.append(rec)
    return records, errors


def import_records(
    store: Store, user: UserInfo | None, records: Iterable[dict[str, Any]], *, source: str
) -> ImportResult:
    """Store parsed records (see :func:`parse_record`) in one transaction; returns the counts."""
    actor = user or system_user()
    result = ImportResult()
    with store.session(write=True) as session:
        for rec in records:
            case = session.scalar(select(Case).where(Case.case_key == rec["case_key"]))
            if case is None:
                case = Case(
                    case_key=rec["case_key"],
                    kind=rec["kind"],
                    site=rec["site"],
                    status="pending",
                    version=0,
                    created=rec["created"],
                    updated=rec["created"],
                )
                session.add(case)
                session.flush()
            elif case.kind != rec["kind"]:
                result.errors.append(
                    f"{source}:{rec.get('line', '?')}: case {rec['case_key']} is a {case.kind} "
                    f"case, not {rec['kind']}"
                )
                continue
            exists = session.scalar(
                select(Prediction.id).where(
                    Prediction.case_id == case.id,
                    Prediction.model == rec["model"],
                    Prediction.model_version == rec["model_version"],
                )
            )
            if exists is not None:
                result.skipped += 1
                continue
            session.add(
                Prediction(
                    case_id=case.id,
                    model=rec["model"],
                    model_version=rec["model_version"],
                    label=rec["label"],
                    scores=rec["scores"],
                    uncertainty=rec["uncertainty"],
                    artifacts=rec["artifacts"],
                    created=rec["created"],
                )
            )
            session.flush()
            result.created += 1
        add_audit(
            session,
            "import",
            user_id=actor.id,
            username=actor.username,
            detail={
                "source": source,
                "created": result.created,
                "skipped": result.skipped,
                "errors": len(result.errors),
            },
        )
    return result


def import_predictions(store: Store, user: UserInfo | None, path: str | Path) -> ImportResult:
    """Import one ``predictions.jsonl`` (``user=None``: the local operator, e.g. the CLI)."""
    src = Path(path)
    if not src.is_file():
        raise InvalidInputError(src, "predictions file not found")
    try:
        text = src.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError(src, "predictions file is not UTF-8 text") from None
    records, errors = _parse_lines(text, str(src), src.parent.absolute())
    result = import_records(store, user, records, source=str(src))
    result.errors[:0] = errors
    for err in result.errors:  # returned to the caller, who shows them (CLI, admin page)
        logger.info("%s", err)
    logger.info(
        "imported %s: %d created, %d skipped, %d errors",
        src,
        result.created,
        result.skipped,
        len(result.errors),
    )
    return result


def validate_upload(
    name: str, data: bytes, *, max_bytes: int = MAX_UPLOAD_BYTES, base: Path | None = None
) -> list[dict[str, Any]]:
    """Check an uploaded predictions JSONL; returns its parsed records (for import_records).

    Relative artifact paths resolve against ``base`` (default: the workspace).

    Raises:
        ReviewError: too large, not UTF-8, no records, or any malformed line (the first five
            problems listed).
    """
    if len(data) > max_bytes:
        raise ReviewError(f"{name}: upload is {len(data)} bytes; the limit is {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ReviewError(f"{name}: upload is not UTF-8 text") from None
    if base is None:
        from medcl.workspace import workspace_root

        base = workspace_root()
    records, errors = _parse_lines(text, name, base)
    if errors:
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ReviewError("; ".join(errors[:5]) + more)
    if not records:
        raise ReviewError(f"{name}: no predictions in the upload")
    return records
