"""Users, passwords and login sessions of the review store.

Passwords are hashed with argon2id (argon2-cffi) and never stored, logged or put in an error.
A login gives a random token; only its SHA-256 is stored, so a copy of the database cannot be used
to log in. Five consecutive failed logins lock the account for 15 minutes (counted atomically, so
parallel guesses cannot check more than five passwords). An unknown user, a wrong password and a
locked account get the same message and take the same time (a dummy hash is checked).
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
from sqlalchemy import or_, select, update
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

    Lock-out holds under parallel attempts: before a password is checked, one attempt is reserved
    with a single ``UPDATE ... SET failed_logins = failed_logins + 1 WHERE failed_logins < 5 AND
    not locked ... RETURNING`` (atomic on SQLite and PostgreSQL alike), so however many processes
    guess at once, at most :data:`MAX_FAILED_LOGINS` passwords are checked before the account
    locks. A correct password gives the reservation back (count reset); the fifth wrong one locks
    the account for :data:`LOCK_MINUTES` (a 'lockout' audit entry). Unknown users, wrong passwords
    and locked accounts get the same message after the same work (an argon2 check of a dummy hash
    stands in where there is no password to check).

    Raises:
        AuthError: "invalid username or password" (unknown user, wrong password or locked
            account alike), or "account is deactivated" (only after the right password).
    """
    t = as_utc(now)
    name = username[:64]
    with store.session(write=True) as session:
        found = session.execute(
            select(User.id, User.password_hash).where(User.username == username)
        ).first()
        reserved: int | None = None
        if found is not None:
            reserved = session.scalar(
                update(User)
                .where(
                    User.id == found.id,
                    User.failed_logins < MAX_FAILED_LOGINS,
                    or_(User.locked_until.is_(None), User.locked_until <= t),
                )
                .values(failed_logins=User.failed_logins + 1)
                .returning(User.failed_logins)
                .execution_options(synchronize_session=False)
            )
    if found is None or reserved is None:
        _verify(_DUMMY_HASH, password)  # the same work as a real check: no timing difference
        reason = "unknown user" if found is None else "locked"
        with store.session(write=True) as session:
            add_audit(
                session,
                "login_failed",
                user_id=None if found is None else found.id,
                username=name,
                now=t,
                detail={"reason": reason},
            )
        logger.info("login refused for '%s': %s", name, reason)
        raise AuthError(INVALID_LOGIN)
    if not _verify(found.password_hash, password):
        _record_failure(store, found.id, name, reserved, t)
        logger.info("login refused for '%s': wrong password", name)
        raise AuthError(INVALID_LOGIN)
    with store.session(write=True) as session:
        session.execute(
            update(User)
            .where(User.id == found.id)
            .values(failed_logins=0, locked_until=None)
            .execution_options(synchronize_session=False)
        )
        row = session.get(User, found.id)
        assert row is not None  # users are never deleted
        if not row.active:
            add_audit(
                session,
                "login_failed",
                user_id=row.id,
                username=row.username,
                now=t,
                detail={"reason": "inactive"},
            )
            inactive = True
        else:
            inactive = False
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
    if inactive:
        logger.info("login refused for '%s': account is deactivated", name)
        raise AuthError("account is deactivated")
    return result


def _record_failure(store: Store, user_id: int, username: str, failures: int, t: datetime) -> None:
    """Audit a wrong password; the attempt that used the last allowed one locks the account.

    The lock is set only while the count still stands at the limit (a correct login in between
    resets it), in one conditional ``UPDATE``.
    """
    with store.session(write=True) as session:
        add_audit(
            session,
            "login_failed",
            user_id=user_id,
            username=username,
            now=t,
            detail={"reason": "wrong password", "failures": failures},
        )
        if failures < MAX_FAILED_LOGINS:
            return
        until = t + timedelta(minutes=LOCK_MINUTES)
        locked = session.execute(
            update(User)
            .where(User.id == user_id, User.failed_logins >= MAX_FAILED_LOGINS)
            .values(locked_until=until, failed_logins=0)
            .execution_options(synchronize_session=False)
        )
        if locked.rowcount == 1:  # type: ignore[attr-defined]
            add_audit(
                session,
                "lockout",
                user_id=user_id,
                username=username,
                now=t,
                detail={"failures": MAX_FAILED_LOGINS, "locked_until": until.isoformat()},
            )
            logger.warning(
                "account '%s' locked until %s UTC after %d failed logins",
                username,
                f"{until:%Y-%m-%d %H:%M}",
                MAX_FAILED_LOGINS,
            )


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
