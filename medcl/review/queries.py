"""Read-side of the review service: the worklist query and the case/review records it returns.

A case may hold predictions of several models or model versions; its worklist row shows the
newest prediction (highest id). :func:`list_cases` is one SQL query with ``LIMIT/OFFSET`` plus one
count over the same filters; filters and sorts hit indexed columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, exists, func, not_, or_, select
from sqlalchemy.orm import Session

from medcl.review import blind
from medcl.review.auth import UserInfo
from medcl.review.db import Case, Prediction, Review, Store, User
from medcl.review.errors import NotFoundError, ReviewError
from medcl.review.labels import allowed_labels
from medcl.review.model_card import card_of, display_name

SORTS = ("uncertainty", "updated", "case_key")
MAX_PAGE_SIZE = 500
LIKE_ESCAPE = "\\"


def escape_like(text: str) -> str:
    """``text`` for a ``LIKE ... ESCAPE '\\'`` pattern: ``%``, ``_`` and ``\\`` match literally."""
    return (
        text.replace(LIKE_ESCAPE, LIKE_ESCAPE * 2)
        .replace("%", LIKE_ESCAPE + "%")
        .replace("_", LIKE_ESCAPE + "_")
    )


@dataclass(frozen=True)
class CaseSummary:
    """One worklist row (the case with its newest prediction)."""

    id: int
    case_key: str
    kind: str
    site: str
    status: str
    model: str
    model_version: str
    label: str
    uncertainty: float
    updated: datetime
    n_reviews: int
    model_name: str = ""  # the model's name for people (model card), else "<model> <version>"


@dataclass(frozen=True)
class Page:
    """One page of the worklist; ``total`` counts every matching case."""

    items: list[CaseSummary]
    total: int
    page: int
    page_size: int

    @property
    def n_pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


@dataclass(frozen=True)
class ReviewInfo:
    """One stored review; ``case_version`` is the version the reviewer saw."""

    id: int
    case_id: int
    reviewer: str
    decision: str
    corrected_label: str | None
    comment: str
    confidence: int | None
    case_version: int
    created: datetime


@dataclass(frozen=True)
class CaseDetail:
    """A case page: summary, the newest prediction's scores and artifacts, its reviews.

    ``allowed_labels``: what a correction may carry (:mod:`medcl.review.labels`). ``blind``: the
    case is shown blind (:mod:`medcl.review.blind`): ground truth and the ``hidden_reviews``
    reviews of others are left out.
    """

    summary: CaseSummary
    scores: dict[str, float]
    artifacts: dict[str, Any]
    version: int
    reviews: list[ReviewInfo]
    allowed_labels: tuple[str, ...] = ()
    blind: bool = False
    hidden_reviews: int = 0


@dataclass(frozen=True)
class AuditEntry:
    """One audit row."""

    id: int
    time: datetime
    username: str
    action: str
    case_id: int | None
    detail: dict[str, Any]


def _latest_prediction() -> Any:
    return (
        select(Prediction.case_id, func.max(Prediction.id).label("pid"))
        .group_by(Prediction.case_id)
        .subquery("latest")
    )


def _summary_select() -> Select[Any]:
    latest = _latest_prediction()
    n_reviews = (
        select(func.count(Review.id)).where(Review.case_id == Case.id).scalar_subquery()
    ).label("n_reviews")
    return (
        select(Case, Prediction, n_reviews)
        .join(latest, latest.c.case_id == Case.id)
        .join(Prediction, Prediction.id == latest.c.pid)
    )


def _summary(case: Case, pred: Prediction, n_reviews: int) -> CaseSummary:
    return CaseSummary(
        id=case.id,
        case_key=case.case_key,
        kind=case.kind,
        site=case.site,
        status=case.status,
        model=pred.model,
        model_version=pred.model_version,
        label=pred.label,
        uncertainty=float(pred.uncertainty),
        updated=case.updated,
        n_reviews=int(n_reviews),
        model_name=display_name(pred.model, pred.model_version, card_of(pred.artifacts)),
    )


def list_cases(
    store: Store,
    user: UserInfo,
    *,
    status: str | None = None,
    kind: str | None = None,
    model: str | None = None,
    site: str | None = None,
    search: str | None = None,
    sort: str = "uncertainty",
    descending: bool = True,
    page: int = 1,
    page_size: int = 25,
) -> Page:
    """The worklist: cases matching every given filter, sorted, one page of them.

    ``search`` matches a substring of the case key or the predicted label (case-insensitive;
    ``%`` and ``_`` are literal characters, not wildcards).
    Ties in the sort are broken by case id, so pages never overlap.
    """
    if sort not in SORTS:
        raise ReviewError(f"sort must be one of {', '.join(SORTS)} (got '{sort}')")
    if page < 1 or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ReviewError(f"page must be >= 1 and page_size in 1..{MAX_PAGE_SIZE}")
    query = _summary_select()
    with store.session() as session:
        blind_user = not user.is_admin and blind.blind_review_on(session)
    mine = exists().where(Review.case_id == Case.id, Review.user_id == user.id)
    conditions = []
    if blind_user:
        query = query.add_columns(mine.label("mine"))
        if status is not None:
            conditions.append(_blind_status_filter(status, mine))
    for column, value in ((Case.kind, kind), (Case.site, site)):
        if value is not None:
            conditions.append(column == value)
    if status is not None and not blind_user:
        conditions.append(Case.status == status)
    if model is not None:
        conditions.append(Prediction.model == model)
    if search:
        pattern = f"%{escape_like(search.lower())}%"
        conditions.append(
            or_(
                func.lower(Case.case_key).like(pattern, escape=LIKE_ESCAPE),
                func.lower(Prediction.label).like(pattern, escape=LIKE_ESCAPE),
            )
        )
    query = query.where(*conditions)
    key: Any = {
        "uncertainty": Prediction.uncertainty,
        "updated": Case.updated,
        "case_key": Case.case_key,
    }[sort]
    order: list[Any] = [key.desc(), Case.id.desc()] if descending else [key.asc(), Case.id.asc()]
    with store.session() as session:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = session.execute(
            query.order_by(*order).limit(page_size).offset((page - 1) * page_size)
        ).all()
        items = [_summary(row[0], row[1], row[2]) for row in rows]
    if blind_user:  # a decision of others shows as 'reviewed' until the user has reviewed
        items = [s if row[3] else blind.mask_summary(s) for s, row in zip(items, rows, strict=True)]
    return Page(items=items, total=int(total), page=page, page_size=page_size)


def _blind_status_filter(status: str, mine: Any) -> Any:
    """The worklist's status filter for a blind reviewer (statuses as they see them)."""
    if status == "pending":
        return Case.status == "pending"
    if status == blind.BLIND_STATUS:
        return and_(Case.status != "pending", not_(mine))
    return and_(Case.status == status, mine)


def filter_options(store: Store, user: UserInfo) -> dict[str, list[str]]:
    """Distinct values for the worklist filters: keys ``status``, ``kind``, ``model``, ``site``.

    A blind reviewer sees the statuses as the worklist shows them to them (see
    :mod:`medcl.review.blind`).
    """
    with store.session() as session:
        statuses = sorted(session.scalars(select(Case.status).distinct()))
        if not user.is_admin and blind.blind_review_on(session):
            mine = exists().where(Review.case_id == Case.id, Review.user_id == user.id)
            own = session.scalars(select(Case.status).where(mine).distinct())
            others = session.scalar(select(exists().where(Case.status != "pending", not_(mine))))
            pending = ["pending"] if "pending" in statuses else []
            statuses = sorted({*pending, *own, *([blind.BLIND_STATUS] if others else [])})
        return {
            "status": statuses,
            "kind": sorted(session.scalars(select(Case.kind).distinct())),
            "model": sorted(session.scalars(select(Prediction.model).distinct())),
            "site": sorted(session.scalars(select(Case.site).distinct())),
        }


def model_display_names(store: Store) -> dict[str, str]:
    """``{model: name for people}`` for the worklist's model filter: the display name of the
    model card of each model's newest prediction, ``"<display name> (<model>)"`` so two
    models with one display name stay apart; the model's own name without a card."""
    with store.session() as session:
        newest = (
            select(Prediction.model, func.max(Prediction.id).label("pid"))
            .group_by(Prediction.model)
            .subquery()
        )
        rows = session.execute(
            select(Prediction.model, Prediction.artifacts).join(
                newest, Prediction.id == newest.c.pid
            )
        ).all()
    out: dict[str, str] = {}
    for model, artifacts in rows:
        card = card_of(artifacts)
        out[model] = f"{card.display_name} ({model})" if card is not None else model
    return out


def reviews_of(session: Session, case_id: int) -> list[ReviewInfo]:
    """The case's reviews, newest first."""
    rows = session.execute(
        select(Review, User.username)
        .join(User, User.id == Review.user_id)
        .where(Review.case_id == case_id)
        .order_by(Review.case_version.desc(), Review.id.desc())
    ).all()
    return [
        ReviewInfo(
            id=r.id,
            case_id=r.case_id,
            reviewer=name,
            decision=r.decision,
            corrected_label=r.corrected_label,
            comment=r.comment,
            confidence=r.confidence,
            case_version=r.case_version,
            created=r.created,
        )
        for r, name in rows
    ]


def load_detail(session: Session, case_id: int) -> CaseDetail:
    """The case ``case_id`` read in ``session``, unmasked (callers that show it to a user apply
    :func:`medcl.review.blind.visible_detail`); :class:`NotFoundError` if there is none."""
    row = session.execute(_summary_select().where(Case.id == case_id)).first()
    if row is None:
        raise NotFoundError(f"no case with id {case_id}")
    case, pred, n_reviews = row
    artifacts = dict(pred.artifacts or {})
    scores = {str(k): float(v) for k, v in (pred.scores or {}).items()}
    return CaseDetail(
        summary=_summary(case, pred, n_reviews),
        scores=scores,
        artifacts=artifacts,
        version=case.version,
        reviews=reviews_of(session, case_id),
        allowed_labels=tuple(allowed_labels(session, pred.model, case.kind, scores, artifacts)),
    )
