"""Which labels a correction may carry: the model's class map plus the labels admins add.

A model's class map is read from its prediction record: the class names of ``scores`` (slide and
volume models score every class), ``artifacts.classes`` when the pipeline lists them (retrieval:
the classes of the demonstration pool), the labels of the demonstrations, and a volume's
``artifacts.labels`` names. A tie label (``"tie: a / b"``) is never a class. Admins add labels to
a model (``medcl review labels add``, the admin page); every change is audited.

The service refuses a correction outside this set (:func:`check_correction_label`), and the
exports check every stored correction again (:func:`label_problem`), so a bad row that reached the
store another way is never exported silently.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from medcl.review.auth import UserInfo, require_admin
from medcl.review.db import ExtraLabel, Store, add_audit, as_utc
from medcl.review.errors import NotFoundError, ReviewError
from medcl.review.predictions import TIE_PREFIX, is_tie_label

logger = logging.getLogger(__name__)

MAX_LABEL = 256


@dataclass(frozen=True)
class ExtraLabelInfo:
    """A label an admin added to a model's class map."""

    model: str
    label: str
    added_by: str
    created: datetime


def model_classes(kind: str, scores: Mapping[str, Any], artifacts: Mapping[str, Any]) -> list[str]:
    """The class map of a prediction (see the module docstring), sorted, without tie labels."""
    found = [str(k) for k in scores]
    classes = artifacts.get("classes")
    if isinstance(classes, list):
        found += [str(c) for c in classes if c is not None]
    if kind == "retrieval":
        demos = artifacts.get("demonstrations") or []
        found += [str(d["label"]) for d in demos if isinstance(d, dict) and d.get("label")]
    if kind == "volume" and isinstance(artifacts.get("labels"), Mapping):
        found += [str(v) for v in artifacts["labels"].values()]
    return sorted({x for x in (f.strip() for f in found) if x and not is_tie_label(x)})


def extra_labels_of(session: Session, model: str) -> list[str]:
    """The labels admins added to ``model``, sorted."""
    rows = session.scalars(select(ExtraLabel.label).where(ExtraLabel.model == model))
    return sorted(rows)


def allowed_labels(
    session: Session, model: str, kind: str, scores: Mapping[str, Any], artifacts: Mapping[str, Any]
) -> list[str]:
    """The labels a correction of this prediction may carry (class map + admin labels), sorted."""
    return sorted({*model_classes(kind, scores, artifacts), *extra_labels_of(session, model)})


def label_problem(label: str | None, allowed: Iterable[str], model: str) -> str | None:
    """Why ``label`` may not be a corrected label of ``model`` (``None`` when it may)."""
    options = sorted(allowed)
    if label is None or not str(label).strip():
        return "no corrected label"
    if label not in options:
        shown = ", ".join(options) or "none"
        return (
            f"'{label}' is not in the class map of model '{model}' (allowed: {shown}; an admin "
            "can add a label)"
        )
    return None


def check_correction_label(label: str | None, allowed: Iterable[str], model: str) -> None:
    """Raise :class:`ReviewError` unless ``label`` is an allowed corrected label."""
    problem = label_problem(label, allowed, model)
    if problem is not None:
        raise ReviewError(f"correction refused: {problem}")


def _clean(label: str) -> str:
    text = " ".join(str(label).split())
    if not text:
        raise ReviewError("a label must not be empty")
    if len(text) > MAX_LABEL:
        raise ReviewError(f"a label is at most {MAX_LABEL} characters")
    if any(unicodedata.category(ch).startswith("C") for ch in text):
        raise ReviewError("a label must not contain control characters")
    if is_tie_label(text):
        raise ReviewError(f"a label must not start with '{TIE_PREFIX}' (that marks a vote tie)")
    return text


def add_extra_label(
    store: Store, admin: UserInfo, model: str, label: str, *, now: datetime | None = None
) -> ExtraLabelInfo:
    """Add ``label`` to the correction labels of ``model`` (admins only; audited 'add_label').

    Raises:
        PermissionDeniedError: not an admin. ReviewError: empty, too long or control
            characters, a tie label, or already there.
    """
    require_admin(admin)
    model, text, t = model.strip(), _clean(label), as_utc(now)
    if not model:
        raise ReviewError("name the model the label belongs to")
    try:
        with store.session(write=True) as session:
            session.add(ExtraLabel(model=model, label=text, added_by=admin.username, created=t))
            session.flush()
            add_audit(
                session,
                "add_label",
                user_id=admin.id,
                username=admin.username,
                detail={"model": model, "label": text},
                now=t,
            )
    except IntegrityError:
        raise ReviewError(f"model '{model}' already has the label '{text}'") from None
    logger.info("%s added label %r to model %s", admin.username, text, model)
    return ExtraLabelInfo(model, text, admin.username, t)


def remove_extra_label(store: Store, admin: UserInfo, model: str, label: str) -> None:
    """Remove an admin-added label (admins only; audited 'remove_label').

    Reviews that already carry it keep it, but the exports then refuse it (logged).
    """
    require_admin(admin)
    with store.session(write=True) as session:
        gone = session.execute(
            delete(ExtraLabel).where(ExtraLabel.model == model, ExtraLabel.label == label)
        )
        if gone.rowcount != 1:  # type: ignore[attr-defined]
            raise NotFoundError(f"model '{model}' has no added label '{label}'")
        add_audit(
            session,
            "remove_label",
            user_id=admin.id,
            username=admin.username,
            detail={"model": model, "label": label},
        )


def list_extra_labels(
    store: Store, user: UserInfo, model: str | None = None
) -> list[ExtraLabelInfo]:
    """Admin-added labels (of ``model`` when given), by model then label."""
    query = select(ExtraLabel).order_by(ExtraLabel.model, ExtraLabel.label)
    if model is not None:
        query = query.where(ExtraLabel.model == model)
    with store.session() as session:
        return [
            ExtraLabelInfo(r.model, r.label, r.added_by, r.created) for r in session.scalars(query)
        ]
