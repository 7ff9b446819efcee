"""Admin read-outs of the review store: the audit log, review exports, corrections manifest.

:func:`export_reviews` writes every review (CSV or JSON, same fields). The corrections manifest
(:func:`export_corrections_manifest`) is a CSV ``path,label,domain,group,case_key`` readable by
:func:`medcl.io.images.load_image_set`: one row per case whose newest review is a correction --
retrieval: the query image and the corrected label; slide: the slide file and the corrected label;
volume: the image and the corrected label, else the reviewer's comment.
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


def _latest_predictions(session: Any) -> dict[int, Prediction]:
    out: dict[int, Prediction] = {}
    for pred in session.scalars(select(Prediction).order_by(Prediction.id)):
        out[pred.case_id] = pred
    return out


def _review_rows(store: Store) -> list[dict[str, Any]]:
    with store.session() as session:
        preds = _latest_predictions(session)
        rows = session.execute(
            select(Review, Case, User.username)
            .join(Case, Case.id == Review.case_id)
            .join(User, User.id == Review.user_id)
            .order_by(Review.id)
        ).all()
        out = []
        for review, case, name in rows:
            pred = preds.get(case.id)
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


def export_reviews(store: Store, admin: UserInfo, fmt: str = "csv") -> str:
    """Every review with its case and prediction, as CSV (header ``REVIEW_FIELDS``) or JSON.

    In CSV, missing values (no corrected label, no confidence) are empty cells.
    """
    require_admin(admin)
    if fmt not in ("csv", "json"):
        raise ReviewError(f"export format must be csv or json (got '{fmt}')")
    rows = _review_rows(store)
    if fmt == "json":
        text = json.dumps(rows, indent=2, ensure_ascii=False)
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=REVIEW_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    _audit_export(store, admin, fmt, len(rows))
    return text


def export_corrections_manifest(store: Store, admin: UserInfo) -> str:
    """The corrected cases as an image-set manifest CSV (see the module docstring)."""
    require_admin(admin)
    with store.session() as session:
        preds = _latest_predictions(session)
        newest: dict[int, tuple[Review, Case]] = {}
        for review, case in session.execute(
            select(Review, Case).join(Case, Case.id == Review.case_id).order_by(Review.id)
        ).all():
            newest[case.id] = (review, case)
    rows: dict[str, dict[str, str]] = {}
    for case_id, (review, case) in sorted(newest.items()):
        if review.decision != "correct" or case_id not in preds:
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
    _audit_export(store, admin, "manifest", len(rows))
    return buf.getvalue()


def _audit_export(store: Store, admin: UserInfo, fmt: str, n: int) -> None:
    with store.session(write=True) as session:
        add_audit(
            session,
            "export",
            user_id=admin.id,
            username=admin.username,
            detail={"format": fmt, "rows": n},
        )
