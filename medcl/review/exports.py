"""Admin read-outs of the review store: the audit log, review exports, corrections manifest.

:func:`export_reviews` writes every review (CSV or JSON, same fields). The corrections manifest
(:func:`export_corrections_manifest`) is a CSV ``path,label,domain,group,case_key`` readable by
:func:`medcl.io.images.load_image_set`: one row per case whose newest review is a correction --
retrieval: the query image and the corrected label; slide: the slide file and the corrected label;
volume: the image and the corrected label, else the reviewer's comment.

Both exports check every stored correction against the allowed labels of its case (the model's
class map plus admin labels, :mod:`medcl.review.labels`). A correction outside them (written
before the check existed, or whose admin label was removed since) is **left out**, never exported
silently: a warning is logged naming the case and the label, the export's audit entry lists it
under ``skipped``, and callers that pass a ``skipped`` list get the reasons (the CLI prints them).
Leaving the row out rather than failing keeps every other review exportable; the reviewer's fix
is a new review of the case.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from typing import Any

from sqlalchemy import select

from medcl.review.auth import UserInfo, require_admin
from medcl.review.db import Audit, Case, Prediction, Review, Store, User, add_audit
from medcl.review.errors import ReviewError
from medcl.review.labels import allowed_labels, label_problem
from medcl.review.queries import AuditEntry

logger = logging.getLogger(__name__)

REVIEW_FIELDS = (
    "review_id",
    "case_key",
    "kind",
    "site",
    "model",
    "model_version",
    "predicted_label",
    "decision",
    "corrected_label",
    "comment",
    "confidence",
    "reviewer",
    "case_version",
    "created",
)
MANIFEST_FIELDS = ("path", "label", "domain", "group", "case_key")
_MANIFEST_PATH_KEY = {"retrieval": "query", "slide": "slide", "volume": "image"}


def audit_log(
    store: Store,
    admin: UserInfo,
    *,
    limit: int = 100,
    offset: int = 0,
    username: str | None = None,
    action: str | None = None,
) -> list[AuditEntry]:
    """Audit entries, newest first, optionally of one user and/or one action."""
    require_admin(admin)
    query = select(Audit).order_by(Audit.id.desc()).limit(limit).offset(offset)
    if username is not None:
        query = query.where(Audit.username == username)
    if action is not None:
        query = query.where(Audit.action == action)
    with store.session() as session:
        return [
            AuditEntry(
                id=a.id,
                time=a.time,
                username=a.username,
                action=a.action,
                case_id=a.case_id,
                detail=dict(a.detail or {}),
            )
            for a in session.scalars(query)
        ]


def latest_predictions(session: Any) -> dict[int, Prediction]:
    out: dict[int, Prediction] = {}
    for pred in session.scalars(select(Prediction).order_by(Prediction.id)):
        out[pred.case_id] = pred
    return out


class LabelChecker:
    """Checks stored corrections against their case's allowed labels (cached per prediction)."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._allowed: dict[int, list[str]] = {}

    def problem(self, review: Review, case: Case, pred: Prediction | None) -> str | None:
        """Why ``review`` must not be exported (``None`` when it may)."""
        if review.decision != "correct":
            return None
        if review.corrected_label is None and case.kind == "volume" and review.comment.strip():
            return None  # a volume correction may be a comment only
        if pred is None:
            return "no prediction to check the corrected label against"
        if pred.id not in self._allowed:
            self._allowed[pred.id] = allowed_labels(
                self._session, pred.model, case.kind, pred.scores or {}, pred.artifacts or {}
            )
        return label_problem(review.corrected_label, self._allowed[pred.id], pred.model)


def skip_row(skipped: list[dict[str, Any]], case_key: str, review_id: int, reason: str) -> None:
    """Log and record a review left out of an export."""
    logger.warning("case %s review %d left out of the export: %s", case_key, review_id, reason)
    skipped.append({"case_key": case_key, "review_id": review_id, "reason": reason})


def _review_rows(store: Store, skipped: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with store.session() as session:
        checker = LabelChecker(session)
        preds = latest_predictions(session)
        rows = session.execute(
            select(Review, Case, User.username)
            .join(Case, Case.id == Review.case_id)
            .join(User, User.id == Review.user_id)
            .order_by(Review.id)
        ).all()
        out = []
        for review, case, name in rows:
            pred = preds.get(case.id)
            problem = checker.problem(review, case, pred)
            if problem is not None:
                skip_row(skipped, case.case_key, review.id, problem)
                continue
            out.append(
                {
                    "review_id": review.id,
                    "case_key": case.case_key,
                    "kind": case.kind,
                    "site": case.site,
                    "model": pred.model if pred else "",
                    "model_version": pred.model_version if pred else "",
                    "predicted_label": pred.label if pred else "",
                    "decision": review.decision,
                    "corrected_label": review.corrected_label,
                    "comment": review.comment,
                    "confidence": review.confidence,
                    "reviewer": name,
                    "case_version": review.case_version,
                    "created": review.created.isoformat(),
                }
            )
    return out


def export_reviews(
    store: Store,
    admin: UserInfo,
    fmt: str = "csv",
    *,
    skipped: list[dict[str, Any]] | None = None,
) -> str:
    """Every review with its case and prediction, as CSV (header ``REVIEW_FIELDS``) or JSON.

    In CSV, missing values (no corrected label, no confidence) are empty cells. Corrections
    outside the allowed labels are left out (see the module docstring); ``skipped`` (when
    given) receives ``{"case_key", "review_id", "reason"}`` of each.
    """
    require_admin(admin)
    if fmt not in ("csv", "json"):
        raise ReviewError(f"export format must be csv or json (got '{fmt}')")
    left_out: list[dict[str, Any]] = []
    rows = _review_rows(store, left_out)
    if fmt == "json":
        text = json.dumps(rows, indent=2, ensure_ascii=False)
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=REVIEW_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    audit_export(store, admin, fmt, len(rows), left_out)
    if skipped is not None:
        skipped.extend(left_out)
    return text


def newest_reviews(session: Any) -> dict[int, tuple[Review, Case]]:
    """The newest review of every reviewed case, by case id."""
    newest: dict[int, tuple[Review, Case]] = {}
    for review, case in session.execute(
        select(Review, Case)
        .join(Case, Case.id == Review.case_id)
        .order_by(Review.case_version, Review.id)
    ).all():
        newest[case.id] = (review, case)
    return newest


def export_corrections_manifest(
    store: Store, admin: UserInfo, *, skipped: list[dict[str, Any]] | None = None
) -> str:
    """The corrected cases as an image-set manifest CSV (see the module docstring); corrections
    outside the allowed labels are left out and reported in ``skipped`` (when given)."""
    require_admin(admin)
    left_out: list[dict[str, Any]] = []
    with store.session() as session:
        preds = latest_predictions(session)
        newest = newest_reviews(session)
        checker = LabelChecker(session)
        problems = {
            case_id: checker.problem(review, case, preds.get(case_id))
            for case_id, (review, case) in newest.items()
        }
    rows: dict[str, dict[str, str]] = {}
    for case_id, (review, case) in sorted(newest.items()):
        if review.decision != "correct" or case_id not in preds:
            continue
        problem = problems[case_id]
        if problem is not None:
            skip_row(left_out, case.case_key, review.id, problem)
            continue
        path = preds[case_id].artifacts.get(_MANIFEST_PATH_KEY.get(case.kind, ""))
        label = review.corrected_label or " ".join(review.comment.split())
        if not isinstance(path, str) or not path or not label:
            logger.warning("case %s: no file or label for the manifest; left out", case.case_key)
            continue
        if path in rows:
            logger.warning(
                "case %s: %s already listed by %s; newer kept",
                case.case_key,
                path,
                rows[path]["case_key"],
            )
        rows[path] = {
            "path": path,
            "label": label,
            "domain": case.site or "default",
            "group": case.case_key,
            "case_key": case.case_key,
        }
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows.values())
    audit_export(store, admin, "manifest", len(rows), left_out)
    if skipped is not None:
        skipped.extend(left_out)
    return buf.getvalue()


def audit_export(
    store: Store, admin: UserInfo, fmt: str, n: int, skipped: list[dict[str, Any]]
) -> None:
    """The audit entry of an export: format, rows written and the rows left out (with why)."""
    detail: dict[str, Any] = {"format": fmt, "rows": n}
    if skipped:
        detail["skipped"] = skipped
    with store.session(write=True) as session:
        add_audit(session, "export", user_id=admin.id, username=admin.username, detail=detail)
