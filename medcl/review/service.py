"""What the review app's pages call. Every call takes the acting :class:`UserInfo`.

Reviews use optimistic concurrency: a reviewer submits with the case ``version`` they saw; the
store bumps the version with ``UPDATE ... WHERE version = expected`` in the same transaction that
inserts the review, so of two reviewers who loaded the same version exactly one is saved and the
other gets :class:`ConflictError` carrying the case as it is now. Nothing is written on conflict.

Artifact files named in the database are opened only through :func:`artifact_path`, which refuses
anything outside the store's allowed roots (symbolic links resolved first).

Every case handed to a user goes through :func:`medcl.review.blind.visible_detail` (blind review:
ground truth and others' reviews hidden until the reviewer has submitted). A correction must carry
a label of the model's class map or one an admin added (:mod:`medcl.review.labels`).
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from sqlalchemy import update

from medcl.errors import InvalidInputError
from medcl.review.auth import UserInfo
from medcl.review.blind import get_blind_review, is_blind, set_blind_review, visible_detail
from medcl.review.db import DECISIONS, Case, Review, Store, User, add_audit, as_utc
from medcl.review.errors import ConflictError, NotFoundError, ReviewError
from medcl.review.exports import audit_log, export_corrections_manifest, export_reviews
from medcl.review.importer import ImportResult, import_predictions, validate_upload
from medcl.review.labels import (
    ExtraLabelInfo,
    add_extra_label,
    check_correction_label,
    list_extra_labels,
    remove_extra_label,
)
from medcl.review.queries import (
    AuditEntry,
    CaseDetail,
    CaseSummary,
    Page,
    ReviewInfo,
    filter_options,
    list_cases,
    load_detail,
    model_display_names,
    reviews_of,
)

__all__ = [
    "AuditEntry",
    "CaseDetail",
    "CaseSummary",
    "ExtraLabelInfo",
    "ImportResult",
    "Page",
    "ReviewInfo",
    "add_extra_label",
    "artifact_path",
    "audit_log",
    "case_history",
    "export_corrections_manifest",
    "export_reviews",
    "filter_options",
    "get_blind_review",
    "get_case",
    "import_predictions",
    "list_cases",
    "list_extra_labels",
    "model_display_names",
    "remove_extra_label",
    "resolve_artifact",
    "set_blind_review",
    "submit_review",
    "validate_upload",
]

logger = logging.getLogger(__name__)

STATUS_OF = {"accept": "accepted", "reject": "rejected", "correct": "corrected"}
MAX_COMMENT = 10_000


def get_case(store: Store, user: UserInfo, case_id: int) -> CaseDetail:
    """The case page's data as ``user`` may see it (blind review applied); records a
    'view_case' audit entry (``detail.blind`` says whether it was shown blind). Unknown id ->
    NotFoundError."""
    with store.session(write=True) as session:
        detail = visible_detail(session, user, load_detail(session, case_id))
        add_audit(
            session,
            "view_case",
            user_id=user.id,
            username=user.username,
            case_id=case_id,
            detail={"blind": True} if detail.blind else None,
        )
    return detail


def case_history(store: Store, user: UserInfo, case_id: int) -> list[ReviewInfo]:
    """The case's reviews ``user`` may see, newest first (a blind reviewer: only their own).
    NotFoundError for an unknown case."""
    with store.session() as session:
        if session.get(Case, case_id) is None:
            raise NotFoundError(f"no case with id {case_id}")
        reviews = reviews_of(session, case_id)
        if is_blind(session, user, case_id):
            return [r for r in reviews if r.reviewer == user.username]
        return reviews


def _validate(
    kind: str,
    decision: str,
    corrected_label: str | None,
    comment: str,
    confidence: int | None,
) -> str | None:
    """Check a review's fields; returns the corrected label to store (only for 'correct').

    The label's membership of the class map is checked by the caller (it needs the session).
    """
    if decision not in DECISIONS:
        raise ReviewError(f"decision must be one of {', '.join(DECISIONS)} (got '{decision}')")
    if confidence is not None and (
        isinstance(confidence, bool) or not isinstance(confidence, int) or not 1 <= confidence <= 5
    ):
        raise ReviewError(f"confidence must be an integer from 1 to 5 (got {confidence!r})")
    if len(comment) > MAX_COMMENT:
        raise ReviewError(f"comment is longer than {MAX_COMMENT} characters")
    label = (corrected_label or "").strip() or None
    if decision != "correct":
        return None
    if label is None and not (kind == "volume" and comment.strip()):
        need = "a corrected label or a comment" if kind == "volume" else "a corrected label"
        raise ReviewError(f"a correction needs {need}")
    return label


def _conflict(store: Store, user: UserInfo, case_id: int) -> ConflictError:
    with store.session() as session:
        current = visible_detail(session, user, load_detail(session, case_id))
    if current.blind:
        message = (
            "another reviewer saved a review of this case while you were editing; your review "
            "was not saved (their decision stays hidden until you submit yours)"
        )
    elif current.reviews:
        last = current.reviews[0]
        message = (
            f"case was reviewed by {last.reviewer} at {last.created:%Y-%m-%d %H:%M:%S} UTC "
            "while you were editing; your review was not saved"
        )
    else:
        message = "case changed while you were editing; your review was not saved"
    return ConflictError(current, message)


def submit_review(
    store: Store,
    user: UserInfo,
    case_id: int,
    *,
    decision: str,
    corrected_label: str | None = None,
    comment: str = "",
    confidence: int | None = None,
    expected_version: int,
    now: datetime | None = None,
) -> ReviewInfo:
    """Save a review of the case version the reviewer saw, in one transaction.

    ``corrected_label`` is kept only for 'correct' (which requires it, or a comment on volume
    cases) and must be in the case's allowed labels (the model's class map plus labels admins
    added). Raises NotFoundError (no case), ReviewError (invalid fields, a label outside the
    class map, or inactive user), ConflictError (the case's version is no longer
    ``expected_version``; nothing written; shown blind when the user reviews blind).
    """
    t = as_utc(now)
    with store.session(write=True) as session:
        case = session.get(Case, case_id)
        if case is None:
            raise NotFoundError(f"no case with id {case_id}")
        label = _validate(case.kind, decision, corrected_label, comment, confidence)
        if label is not None:
            current = load_detail(session, case_id)
            check_correction_label(label, current.allowed_labels, current.summary.model)
        reviewer = session.get(User, user.id)
        if reviewer is None or not reviewer.active:
            raise ReviewError(f"user '{user.username}' cannot review (unknown or deactivated)")
        bumped = session.execute(
            update(Case)
            .where(Case.id == case_id, Case.version == expected_version)
            .values(version=Case.version + 1, status=STATUS_OF[decision], updated=t)
            .execution_options(synchronize_session=False)
        )
        if bumped.rowcount != 1:  # type: ignore[attr-defined]
            session.rollback()
            conflict = True
        else:
            conflict = False
            row = Review(
                case_id=case_id,
                user_id=user.id,
                decision=decision,
                corrected_label=label,
                comment=comment,
                confidence=confidence,
                case_version=expected_version,
                created=t,
            )
            session.add(row)
            add_audit(
                session,
                "review",
                user_id=user.id,
                username=user.username,
                case_id=case_id,
                detail={"decision": decision, "case_version": expected_version},
                now=t,
            )
            session.flush()
            info = ReviewInfo(
                id=row.id,
                case_id=case_id,
                reviewer=user.username,
                decision=decision,
                corrected_label=label,
                comment=comment,
                confidence=confidence,
                case_version=expected_version,
                created=t,
            )
    if conflict:
        logger.info("review of case %d by %s refused: version moved on", case_id, user.username)
        raise _conflict(store, user, case_id)
    return info


def artifact_path(store: Store, case: CaseDetail, key: str, index: int | None = None) -> Path:
    """The resolved file behind ``case.artifacts[key]`` (``[index]`` for lists such as
    ``top_tiles``; for ``demonstrations`` the item's ``path``).

    Raises:
        NotFoundError: no such artifact, or its file does not exist.
        InvalidInputError: the path (after resolving ``..`` and symbolic links) is outside the
            store's allowed roots.
    """
    value = case.artifacts.get(key)
    if value is not None and index is not None:
        if not isinstance(value, list) or not 0 <= index < len(value):
            raise NotFoundError(f"case {case.summary.case_key}: no artifact {key}[{index}]")
        value = value[index]
    if isinstance(value, dict):
        value = value.get("path")
    if value is None:
        raise NotFoundError(f"case {case.summary.case_key}: no artifact '{key}'")
    if not isinstance(value, str) or not value:
        raise ReviewError(f"case {case.summary.case_key}: artifact '{key}' is not a file path")
    return resolve_artifact(store, value)


def resolve_artifact(store: Store, value: str) -> Path:
    """The existing file ``value`` (an absolute path) resolved inside the store's allowed roots.

    Raises:
        InvalidInputError: not absolute, or outside the allowed roots after resolving.
        NotFoundError: no such file.
    """
    raw = Path(value)
    if not raw.is_absolute():
        raise InvalidInputError(value, "artifact path is not absolute (re-import the case)")
    target = raw.resolve()
    for root in store.roots:
        if target == root or root in target.parents:
            break
    else:
        roots = ", ".join(str(r) for r in store.roots) or "none"
        raise InvalidInputError(value, f"artifact is outside the allowed folders ({roots})")
    if not target.is_file():
        raise NotFoundError(f"{value}: artifact file not found")
    return target
