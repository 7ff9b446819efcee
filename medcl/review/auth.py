"""Users, passwords and login sessions of the review store.

Passwords are hashed with argon2id (argon2-cffi) and never stored, logged or put in an error.
A login gives a random token; only its SHA-256 is stored, so a copy of the database cannot be used
to log in. Five consecutive failed logins lock the account for 15 minutes. An unknown user and a
wrong password get the same message (and take the same time: a dummy hash is checked).
Every function that takes ``now`` uses it as the current time (tests inject a clock).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from medcl.review.db import ROLES, AuthSession, Store, User, add_audit, as_utc
from medcl.review.errors import AuthError, NotFoundError, PermissionDeniedError, ReviewError

logger = logging.getLogger(__name__)

SESSION_HOURS = 8.0
MAX_FAILED_LOGINS = 5
LOCK_MINUTES = 15
MIN_PASSWORD_LENGTH = 8
INVALID_LOGIN = "invalid username or password"

_hasher = PasswordHasher()  # argon2id
_DUMMY_HASH = _hasher.hash("not a real password, only for timing")


@dataclass(frozen=True)
class UserInfo:
    """Who is acting: what the service functions take as ``user``."""

    id: int
    username: str
    role: str
    active: bool

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class SessionInfo:
    """A login: ``token`` goes to the browser; only its hash is in the database."""

    token: str
    user: UserInfo
    expires: datetime


def system_user() -> UserInfo:
    """The identity of the local operator (``medcl review`` CLI): an admin with no user row."""
    return UserInfo(id=0, username="system", role="admin", active=True)


def require_admin(user: UserInfo) -> None:
    """Raise :class:`PermissionDeniedError` unless ``user`` is an active admin."""
    if not (user.is_admin and user.active):
        raise PermissionDeniedError(f"user '{user.username}' is not an admin")


def _info(row: User) -> UserInfo:
    return UserInfo(id=row.id, username=row.username, role=row.role, active=row.active)


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ReviewError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")


def create_user(
    store: Store,
    username: str,
    password: str,
    role: str = "reviewer",
    *,
    actor: UserInfo | None = None,
) -> UserInfo:
    """Add a user (``actor``, when given, must be an admin; ``None`` is the local operator)."""
    if actor is not None:
        require_admin(actor)
    username = username.strip()
    if not username or len(username) > 64 or any(c.isspace() for c in username):
        raise ReviewError("username must be 1-64 characters without spaces")
    if role not in ROLES:
        raise ReviewError(f"role must be one of {', '.join(ROLES)} (got '{role}')")
    _check_password(password)
    acting = actor or system_user()
    try:
        with store.session(write=True) as session:
            if session.scalar(select(User.id).where(User.username == username)) is not None:
                raise ReviewError(f"user '{username}' already exists")
            row = User(
                username=username,
                password_hash=_hasher.hash(password),
                role=role,
                active=True,
                failed_logins=0,
            )
            session.add(row)
            session.flush()
            add_audit(
                session,
                "add_user",
                user_id=acting.id,
                username=acting.username,
                detail={"username": username, "role": role},
            )
            info = _info(row)
    except IntegrityError:
        raise ReviewError(f"user '{username}' already exists") from None
    logger.info("added %s '%s'", role, username)
    return info


def authenticate(
    store: Store,
    username: str,
    password: str,
    *,
    now: datetime | None = None,
    session_hours: float = SESSION_HOURS,
) -> SessionInfo:
    """Check the password and open a session of ``session_hours``.

    Raises:
        AuthError: "invalid username or password" (unknown user or wrong password alike),
            "account locked until <time> UTC" after 5 consecutive failures, or
            "account is deactivated".
    """
    t = as_utc(now)
    error: AuthError | None = None
    with store.session(write=True) as session:
        row = session.scalar(select(User).where(User.username == username))
        if row is None:
            _verify(_DUMMY_HASH, password)
            add_audit(session, "login_failed", user_id=None, username=username[:64], now=t)
            error = AuthError(INVALID_LOGIN)
        elif row.locked_until is not None and row.locked_until > t:
            add_audit(
                session,
                "login_failed",
                user_id=row.id,
                username=row.username,
                now=t,
                detail={"reason": "locked"},
            )
            error = AuthError(f"account locked until {row.locked_until:%Y-%m-%d %H:%M} UTC")
        elif not _verify(row.password_hash, password):
            row.failed_logins += 1
            detail: dict[str, object] = {"failures": row.failed_logins}
            if row.failed_logins >= MAX_FAILED_LOGINS:
                row.locked_until = t + timedelta(minutes=LOCK_MINUTES)
                row.failed_logins = 0
                detail["locked_until"] = row.locked_until.isoformat()
                logger.warning("account '%s' locked after %d failures", username, MAX_FAILED_LOGINS)
            add_audit(
                session,
                "login_failed",
                user_id=row.id,
                username=row.username,
                now=t,
                detail=detail,
            )
            error = AuthError(INVALID_LOGIN)
        elif not row.active:
            add_audit(
                session,
                "login_failed",
                user_id=row.id,
                username=row.username,
                now=t,
                detail={"reason": "inactive"},
            )
            error = AuthError("account is deactivated")
        else:
            row.failed_logins = 0
            row.locked_until = None
            token = secrets.token_urlsafe(32)
            expires = t + timedelta(hours=session_hours)
            session.add(
                AuthSession(
                    token_hash=_hash_token(token),
                    user_id=row.id,
                    created=t,
                    expires=expires,
                    revoked=False,
                )
            )
            add_audit(session, "login", user_id=row.id, username=row.username, now=t)
            result = SessionInfo(token=token, user=_info(row), expires=expires)
    # the failed attempt is committed before raising (the lockout counter must persist)
    if error is not None:
        logger.info("login refused for '%s': %s", username, error)
        raise error
    return result


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def get_session_user(store: Store, token: str, *, now: datetime | None = None) -> UserInfo | None:
    """The user of a live session; ``None`` for an unknown, expired or revoked token."""
    if not token:
        return None
    t = as_utc(now)
    with store.session() as session:
        found = session.execute(
            select(AuthSession, User)
            .join(User, User.id == AuthSession.user_id)
            .where(AuthSession.token_hash == _hash_token(token))
        ).first()
        if found is None:
            return None
        sess, user = found
        if sess.revoked or sess.expires <= t or not user.active:
            return None
        return _info(user)


def logout(store: Store, token: str, *, now: datetime | None = None) -> None:
    """Revoke the session of ``token`` (unknown tokens are ignored)."""
    with store.session(write=True) as session:
        found = session.execute(
            select(AuthSession, User)
            .join(User, User.id == AuthSession.user_id)
            .where(AuthSession.token_hash == _hash_token(token))
        ).first()
        if found is None or found[0].revoked:
            return
        found[0].revoked = True
        add_audit(session, "logout", user_id=found[1].id, username=found[1].username, now=now)


def set_password(store: Store, actor: UserInfo, username: str, password: str) -> None:
    """Change ``username``'s password (themselves, or an admin); revokes their sessions."""
    if actor.username != username:
        require_admin(actor)
    _check_password(password)
    with store.session(write=True) as session:
        row = session.scalar(select(User).where(User.username == username))
        if row is None:
            raise NotFoundError(f"no user '{username}'")
        row.password_hash = _hasher.hash(password)
        row.failed_logins = 0
        row.locked_until = None
        for s in session.scalars(select(AuthSession).where(AuthSession.user_id == row.id)):
            s.revoked = True
        add_audit(
            session,
            "set_password",
            user_id=actor.id,
            username=actor.username,
            detail={"username": username},
        )


def set_active(store: Store, admin: UserInfo, username: str, active: bool) -> UserInfo:
    """Activate or deactivate a user (deactivation ends their sessions at once)."""
    require_admin(admin)
    if not active and username == admin.username:
        raise ReviewError("an admin cannot deactivate their own account")
    with store.session(write=True) as session:
        row = session.scalar(select(User).where(User.username == username))
        if row is None:
            raise NotFoundError(f"no user '{username}'")
        row.active = active
        add_audit(
            session,
            "set_active",
            user_id=admin.id,
            username=admin.username,
            detail={"username": username, "active": active},
        )
        return _info(row)


def list_users(store: Store, admin: UserInfo) -> list[UserInfo]:
    """Every user, by username."""
    require_admin(admin)
    with store.session() as session:
        return [_info(u) for u in session.scalars(select(User).order_by(User.username))]
