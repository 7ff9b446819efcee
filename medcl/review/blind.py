"""Blind review: what a reviewer may see of a case before submitting their own review.

The project setting ``blind_review`` (a row of the ``settings`` table, default on; admins change
it with :func:`set_blind_review`, audited 'set_setting') decides. While it is on, a reviewer who
has not yet reviewed a case does not see:

- its ground truth: the artifacts in :data:`GROUND_TRUTH_KEYS` (a retrieval case's
  ``true_label``, a volume's ``ground_truth`` and its ``dice``, any ``true_label`` /
  ``ground_truth`` of a slide);
- other reviewers' reviews (history, labels, comments);
- a status that tells another reviewer's decision: ``accepted`` / ``rejected`` / ``corrected``
  show as :data:`BLIND_STATUS`.

Once the reviewer has submitted a review of that case, everything is shown. Admins always see
everything. The service and the worklist query apply :func:`mask_detail` and
:func:`mask_status` to every case they return, so no page can forget the policy.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from medcl.review.auth import UserInfo, require_admin
from medcl.review.db import Review, Setting, Store, add_audit, as_utc
from medcl.review.errors import ReviewError

if TYPE_CHECKING:  # queries imports this module
    from medcl.review.queries import CaseDetail, CaseSummary

BLIND_KEY = "blind_review"
BLIND_DEFAULT = True
BLIND_STATUS = "reviewed"
GROUND_TRUTH_KEYS: dict[str, tuple[str, ...]] = {
    "retrieval": ("true_label", "ground_truth"),
    "slide": ("true_label", "ground_truth", "ground_truth_label"),
    "volume": ("ground_truth", "dice", "true_label"),
}


def blind_review_on(session: Session) -> bool:
    """The ``blind_review`` setting (default :data:`BLIND_DEFAULT`)."""
    row = session.get(Setting, BLIND_KEY)
    return BLIND_DEFAULT if row is None else bool(row.value)


def get_blind_review(store: Store) -> bool:
    """Whether blind review is on for the project."""
    with store.session() as session:
        return blind_review_on(session)


def set_blind_review(
    store: Store, admin: UserInfo, on: bool, *, now: datetime | None = None
) -> None:
    """Turn blind review on or off (admins only; audited 'set_setting' with old and new value)."""
    require_admin(admin)
    if not isinstance(on, bool):
        raise ReviewError(f"blind review is on or off (got {on!r})")
    t = as_utc(now)
    with store.session(write=True) as session:
        row = session.get(Setting, BLIND_KEY)
        before = BLIND_DEFAULT if row is None else bool(row.value)
        if row is None:
            session.add(Setting(key=BLIND_KEY, value=on, updated=t, updated_by=admin.username))
        else:
            row.value, row.updated, row.updated_by = on, t, admin.username
        add_audit(
            session,
            "set_setting",
            user_id=admin.id,
            username=admin.username,
            detail={"key": BLIND_KEY, "old": before, "new": on},
            now=t,
        )


def has_reviewed(session: Session, user: UserInfo, case_id: int) -> bool:
    """Whether ``user`` has a review of the case."""
    query = select(exists().where(Review.case_id == case_id, Review.user_id == user.id))
    return bool(session.scalar(query))


def is_blind(session: Session, user: UserInfo, case_id: int) -> bool:
    """Whether ``user`` sees the case blind now (setting on, not admin, no own review)."""
    if user.is_admin or not blind_review_on(session):
        return False
    return not has_reviewed(session, user, case_id)


def mask_status(status: str) -> str:
    """The status a blind reviewer sees: ``pending`` stays, a decision shows as reviewed."""
    return status if status == "pending" else BLIND_STATUS


def mask_summary(summary: CaseSummary) -> CaseSummary:
    """``summary`` with a decision-revealing status masked."""
    return replace(summary, status=mask_status(summary.status))


def hidden_artifacts(kind: str, artifacts: dict[str, Any]) -> dict[str, Any]:
    """``artifacts`` without the ground-truth keys of the case kind."""
    keys = set(GROUND_TRUTH_KEYS.get(kind, ())) | {"true_label", "ground_truth"}
    return {k: v for k, v in artifacts.items() if k not in keys}


def mask_detail(detail: CaseDetail, user: UserInfo) -> CaseDetail:
    """The case as a blind reviewer sees it (only their own reviews; none before submitting)."""
    own = [r for r in detail.reviews if r.reviewer == user.username]
    return replace(
        detail,
        summary=mask_summary(detail.summary),
        artifacts=hidden_artifacts(detail.summary.kind, detail.artifacts),
        reviews=own,
        blind=True,
        hidden_reviews=len(detail.reviews) - len(own),
    )


def visible_detail(session: Session, user: UserInfo, detail: CaseDetail) -> CaseDetail:
    """``detail`` as ``user`` may see it now (masked while they review blind)."""
    if is_blind(session, user, detail.summary.id):
        return mask_detail(detail, user)
    return detail
