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
     "artifacts": {...},           # by kind, see below
     "model_card": {...}}          # optional, see medcl.review.model_card

Artifacts (paths relative to the predictions file's folder, or absolute):

- volume: ``image`` (required), ``mask``, ``ground_truth`` (or null), ``labels`` {"1": "liver"},
  ``dice`` {"liver": 0.91} or null
- slide: ``slide`` (required), ``mpp`` (or null), ``thumbnail``, ``heatmap``, ``heatmap_colorbar``
  (its colour bar PNG), ``heatmap_score`` (what the colours show), ``scores`` (HDF5 of
  coords + scores), ``top_tiles`` [paths], ``bag`` (the slide's feature bag, for
  ``medcl review export --format mil-manifest``)
- retrieval: ``query`` (required), ``true_label`` (or null), ``demonstrations`` [{"path", "label",
  "similarity", "domain"}], ``lmm_answer`` (or null), ``selector``, ``classes`` (the pool's class
  names), ``tie`` (null, or the classes tied in the vote when ``label`` is ``"tie: a / b"``)

``(case_key, model, model_version)`` is unique: importing the same file twice adds nothing. A case
is created at its first prediction (status 'pending', version 0); a later model version adds a
prediction to the same case. Malformed lines are reported as ``file:line: problem`` and skipped;
the good lines are imported. Relative artifact paths are made absolute at import.

Files are streamed and stored in transactions of :data:`BATCH_SIZE` records with insert-or-skip
(``ON CONFLICT DO NOTHING``) on the unique keys: memory holds one batch, the app's logins and
reviews get the database between batches (SQLite has one writer), an import killed midway is
finished by running it again, and two imports of the same file at once both succeed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy import select

from medcl.errors import InvalidInputError
from medcl.review.auth import UserInfo, system_user
from medcl.review.db import KINDS, Case, Prediction, Store, add_audit, as_utc, utcnow
from medcl.review.errors import ReviewError
from medcl.review.model_card import attach_model_card

logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
BATCH_SIZE = 500  # records per transaction
MIN_BATCH_PAUSE_S = 0.01  # SQLite: write lock left free between batches (see _pause_for_others)
MAX_BATCH_PAUSE_S = 0.2
_REQUIRED = ("case_key", "kind", "model", "model_version", "label")
_PATH_KEYS = {
    "volume": ("image", "mask", "ground_truth"),
    "slide": (
        "slide",
        "thumbnail",
        "heatmap",
        "heatmap_figure",
        "heatmap_colorbar",
        "scores",
        "bag",
    ),
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
    if kind == "volume" and out.get("labels") is not None:
        labels = out["labels"]
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and k.strip().lstrip("-").isdigit() and isinstance(v, str)
            for k, v in labels.items()
        ):
            raise ValueError('artifacts.labels must map class numbers to names ({"1": "liver"})')
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
    for key in ("classes", "tie"):
        names = out.get(key)
        if names is not None and not (
            isinstance(names, list) and all(isinstance(n, str) and n.strip() for n in names)
        ):
            raise ValueError(f"artifacts.{key} must be a list of class names")
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
        "artifacts": attach_model_card(
            _artifacts(kind, obj.get("artifacts", {}), base), obj.get("model_card")
        ),
    }


def _parse_lines(
    lines: Iterable[tuple[int, str]], source: str, base: Path, errors: list[tuple[int, str]]
) -> Iterator[dict[str, Any]]:
    """Parsed records of ``(line number, text)`` pairs, one at a time; problems go to ``errors``."""
    for lineno, line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append((lineno, f"{source}:{lineno}: not valid JSON ({exc.msg})"))
            continue
        try:
            rec = parse_record(obj, base)
        except ValueError as exc:
            errors.append((lineno, f"{source}:{lineno}: {exc}"))
            continue
        rec["line"] = lineno
        yield rec


def _file_lines(src: Path, errors: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """The file's lines, streamed (never the whole file in memory); undecodable lines reported."""
    with src.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError:
                errors.append((lineno, f"{src}:{lineno}: not UTF-8 text"))


def _insert(store: Store, table: Any) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` for the store's database (insert-or-skip)."""
    if store.is_sqlite:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    return pg_insert(table).on_conflict_do_nothing()


def _store_batch(
    store: Store, batch: list[dict[str, Any]], source: str, result: ImportResult
) -> list[tuple[int, str]]:
    """Write one batch in one short transaction; returns its ``(line, problem)`` errors.

    Cases and predictions are inserted with ``ON CONFLICT DO NOTHING`` on their unique keys, so
    an import running at the same time (or an earlier, interrupted one) never makes this fail.
    Rows go in sorted by their unique key, so two imports that wait for each other's rows on
    PostgreSQL always take them in the same order (no deadlock).
    """
    errors: list[tuple[int, str]] = []
    first: dict[str, dict[str, Any]] = {}
    for rec in batch:
        first.setdefault(rec["case_key"], rec)
    with store.session(write=True) as session:
        session.execute(
            _insert(store, Case.__table__),
            [
                {
                    "case_key": key,
                    "kind": rec["kind"],
                    "site": rec["site"],
                    "status": "pending",
                    "version": 0,
                    "created": rec["created"],
                    "updated": rec["created"],
                }
                for key, rec in sorted(first.items())
            ],
        )
        cases = {
            key: (cid, kind)
            for cid, key, kind in session.execute(
                select(Case.id, Case.case_key, Case.kind).where(Case.case_key.in_(list(first)))
            )
        }
        rows: dict[tuple[int, str, str], dict[str, Any]] = {}
        duplicates = 0
        for rec in batch:
            case_id, kind = cases[rec["case_key"]]
            if kind != rec["kind"]:
                line = int(rec.get("line", 0))
                errors.append(
                    (
                        line,
                        f"{source}:{rec.get('line', '?')}: case {rec['case_key']} is a {kind} "
                        f"case, not {rec['kind']}",
                    )
                )
                continue
            key = (case_id, rec["model"], rec["model_version"])
            if key in rows:
                duplicates += 1
                continue
            rows[key] = {
                "case_id": case_id,
                "model": rec["model"],
                "model_version": rec["model_version"],
                "label": rec["label"],
                "scores": rec["scores"],
                "uncertainty": rec["uncertainty"],
                "artifacts": rec["artifacts"],
                "created": rec["created"],
            }
        created = 0
        if rows:
            inserted = session.execute(
                _insert(store, Prediction.__table__).returning(Prediction.__table__.c.id),
                [rows[key] for key in sorted(rows)],
            )
            created = len(inserted.all())
    result.created += created
    result.skipped += len(rows) - created + duplicates
    return errors


def _pause_for_others(store: Store, seconds: float) -> None:
    """On SQLite, leave the write lock free between batches for about as long as a batch held
    it, so a login or a review waiting for it gets in (SQLite has one writer at a time)."""
    if store.is_sqlite:
        time.sleep(min(MAX_BATCH_PAUSE_S, max(MIN_BATCH_PAUSE_S, seconds)))


def import_records(
    store: Store,
    user: UserInfo | None,
    records: Iterable[dict[str, Any]],
    *,
    source: str,
    batch_size: int = BATCH_SIZE,
    line_errors: list[tuple[int, str]] | None = None,
) -> ImportResult:
    """Store parsed records (see :func:`parse_record`) in transactions of ``batch_size`` records.

    ``records`` is consumed lazily, so memory holds one batch. Each batch commits on its own:
    an import killed midway keeps the batches it finished, and running it again adds the rest
    (finished ones are skipped). One 'import' audit entry with the totals is written at the end.
    ``line_errors`` collects the problems of the lines the records come from (reported first
    in line order, with the store's own problems).
    """
    if batch_size < 1:
        raise ReviewError(f"batch size must be at least 1 (got {batch_size})")
    actor = user or system_user()
    result = ImportResult()
    errors: list[tuple[int, str]] = []
    batch: list[dict[str, Any]] = []
    iterator = iter(records)
    while True:
        batch = list(islice(iterator, batch_size))
        if not batch:
            break
        start = time.perf_counter()
        errors += _store_batch(store, batch, source, result)
        _pause_for_others(store, time.perf_counter() - start)
    errors += line_errors or []
    result.errors = [message for _, message in sorted(errors, key=lambda e: e[0])]
    with store.session(write=True) as session:
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


def import_predictions(
    store: Store, user: UserInfo | None, path: str | Path, *, batch_size: int = BATCH_SIZE
) -> ImportResult:
    """Import one ``predictions.jsonl`` (``user=None``: the local operator, e.g. the CLI).

    The file is streamed and stored in batches (see :func:`import_records`).
    """
    src = Path(path)
    if not src.is_file():
        raise InvalidInputError(src, "predictions file not found")
    line_errors: list[tuple[int, str]] = []
    records = _parse_lines(
        _file_lines(src, line_errors), str(src), src.parent.absolute(), line_errors
    )
    result = import_records(
        store, user, records, source=str(src), batch_size=batch_size, line_errors=line_errors
    )
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
    found: list[tuple[int, str]] = []
    records = list(_parse_lines(enumerate(text.splitlines(), start=1), name, base, found))
    if found:
        errors = [message for _, message in found]
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ReviewError("; ".join(errors[:5]) + more)
    if not records:
        raise ReviewError(f"{name}: no predictions in the upload")
    return records
