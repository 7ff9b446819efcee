"""Errors of the review store: every one is a :class:`~medcl.errors.MedclError` shown to users."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medcl.errors import MedclError

if TYPE_CHECKING:
    from medcl.review.service import CaseDetail


class ReviewError(MedclError):
    """A review-store request cannot be done (bad value, duplicate user, invalid upload)."""


class StoreBusyError(ReviewError):
    """The database stayed locked by another writer for longer than the busy timeout."""


class AuthError(ReviewError):
    """Login refused: wrong credentials (one message for all), locked or deactivated account."""


class NotFoundError(ReviewError):
    """A case, user or artifact asked for does not exist."""


class PermissionDeniedError(ReviewError):
    """A reviewer called a function only admins may call."""


class ConflictError(ReviewError):
    """The case changed since the reviewer loaded it; their review was not saved.

    Attributes:
        current: the case as it is now (its newest review first in ``current.reviews``).
    """

    def __init__(self, current: CaseDetail, message: str) -> None:
        self.current = current
        super().__init__(message)
