"""Reviewed cases fed back to the models: final labels, and the MIL bags manifest of slides.

:func:`reviewed_cases` lists the cases whose newest review accepted or corrected the prediction,
with the final label (the corrected label, or the predicted one when accepted) and who decided
when. Labels are checked as the exports check them (:class:`~medcl.review.exports.LabelChecker`);
an accepted tie (``"tie: a / b"``) has no single label. Such cases are left out with a logged
reason, never silently.

Users: ``medcl retrieval index --add-reviewed`` adds the retrieval cases to a demonstration pool
(:mod:`medcl.retrieval.reviewed`); ``medcl review export --format mil-manifest`` writes the slide
cases as a bags manifest ``medcl mil train --bags`` reads (columns ``bag,label,patient,bag_id``
plus provenance ``case_key,decision,reviewer,reviewed_at``). A slide case names its feature bag
in ``artifacts.bag`` (the demo pipeline writes it); otherwise ``<features_dir>/<slide stem>.h5``
is used when ``features_dir`` is given.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from medcl.review.auth import UserInfo, require_admin
from medcl.review.db import Store, User
from medcl.review.errors import ReviewError
from medcl.review.exports import (
    LabelChecker,
    audit_export,
    latest_predictions,
    newest_reviews,
    skip_row,
)
from medcl.review.predictions import is_tie_label

logger = logging.getLogger(__name__)

FEEDBACK_DECISIONS = ("accept", "correct")
MIL_FIELDS = (
    "bag",
    "label",
    "patient",
    "bag_id",
    "case_key",
    "decision",
    "reviewer",
    "reviewed_at",
)


@dataclass(frozen=True)
class ReviewedCase:
    """A case whose newest review accepted or corrected the prediction.

    Attributes:
        label: the final label (corrected, or the accepted prediction).
        reviewer / reviewed_at / review_id: who decided, when (naive UTC), which review.
        artifacts: the newest prediction's artifacts (absolute paths).
    """

    case_id: int
    case_key: str
    kind: str
    site: str
    model: str
    decision: str
    label: str
    reviewer: str
    reviewed_at: datetime
    review_id: int
    artifacts: dict[str, Any]


def reviewed_cases(
    store: Store,
    admin: UserInfo,
    kind: str,
    *,
    model: str | None = None,
    skipped: list[dict[str, Any]] | None = None,
) -> list[ReviewedCase]:
    """Cases of ``kind`` (and ``model`` when given) whose newest review is accept or correct,
    by case id. Left out, logged and reported in ``skipped``: labels outside the allowed labels,
    accepted ties. Admins only."""
    require_admin(admin)
    out: list[ReviewedCase] = []
    left_out: list[dict[str, Any]] = [] if skipped is None else skipped
    with store.session() as session:
        preds = latest_predictions(session)
        checker = LabelChecker(session)
        for case_id, (review, case) in sorted(newest_reviews(session).items()):
            pred = preds.get(case_id)
            if case.kind != kind or review.decision not in FEEDBACK_DECISIONS or pred is None:
                continue
            if model is not None and pred.model != model:
                continue
            if review.decision == "correct":
                label, problem = review.corrected_label, checker.problem(review, case, pred)
            else:
                label = pred.label
                problem = (
                    f"the accepted prediction '{label}' is a tie, not one label"
                    if is_tie_label(label)
                    else None
                )
            if problem is not None or not label:
                skip_row(left_out, case.case_key, review.id, problem or "no label")
                continue
            reviewer = session.get(User, review.user_id)
            out.append(
                ReviewedCase(
                    case_id=case_id,
                    case_key=case.case_key,
                    kind=case.kind,
                    site=case.site,
                    model=pred.model,
                    decision=review.decision,
                    label=label,
                    reviewer=reviewer.username if reviewer else f"user {review.user_id}",
                    reviewed_at=review.created,
                    review_id=review.id,
                    artifacts=dict(pred.artifacts or {}),
                )
            )
    return out


def _bag_file(case: ReviewedCase, features_dir: Path | None) -> tuple[Path | None, str]:
    """The feature bag of a slide case, or ``None`` and why not."""
    bag = case.artifacts.get("bag")
    if isinstance(bag, str) and bag:
        path = Path(bag)
        return (path, "") if path.is_file() else (None, f"feature bag {bag} not found")
    slide = case.artifacts.get("slide")
    if features_dir is not None and isinstance(slide, str) and slide:
        path = Path(features_dir) / f"{Path(slide).stem}.h5"
        return (path, "") if path.is_file() else (None, f"feature bag {path} not found")
    return None, "the case names no feature bag (artifacts.bag) and no features folder was given"


def export_mil_manifest(
    store: Store,
    admin: UserInfo,
    *,
    features_dir: Path | None = None,
    skipped: list[dict[str, Any]] | None = None,
) -> str:
    """The reviewed slide cases as a MIL bags manifest CSV (header :data:`MIL_FIELDS`).

    Every accepted or corrected slide case with a feature bag gives one row, its final label as
    ``label``. Cases left out (label outside the allowed labels, no bag file, a bag listed twice)
    are logged, put in ``skipped`` and in the export's audit entry. Raises ReviewError when no
    row remains (``medcl mil train`` would refuse an empty manifest).
    """
    require_admin(admin)
    left_out: list[dict[str, Any]] = []
    rows: list[dict[str, str]] = []
    seen: dict[str, str] = {}
    for case in reviewed_cases(store, admin, "slide", skipped=left_out):
        bag, why = _bag_file(case, features_dir)
        if bag is None:
            skip_row(left_out, case.case_key, case.review_id, why)
            continue
        bag_id = bag.stem
        if bag_id in seen:
            skip_row(
                left_out, case.case_key, case.review_id, f"bag {bag_id} already from {seen[bag_id]}"
            )
            continue
        seen[bag_id] = case.case_key
        rows.append(
            {
                "bag": str(bag),
                "label": case.label,
                "patient": str(case.artifacts.get("patient") or case.case_key),
                "bag_id": bag_id,
                "case_key": case.case_key,
                "decision": case.decision,
                "reviewer": case.reviewer,
                "reviewed_at": case.reviewed_at.isoformat(timespec="seconds"),
            }
        )
    audit_export(store, admin, "mil-manifest", len(rows), left_out)
    if skipped is not None:
        skipped.extend(left_out)
    if not rows:
        raise ReviewError(
            "no accepted or corrected slide case with a feature bag to export "
            f"({len(left_out)} left out)"
        )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MIL_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    logger.info("MIL manifest: %d bags, %d left out", len(rows), len(left_out))
    return buf.getvalue()
