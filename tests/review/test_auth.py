"""Auth: argon2id hashes, one message for every bad login, lockout, expiry, logout, roles."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from medcl.review.auth import (
    INVALID_LOGIN,
    authenticate,
    create_user,
    get_session_user,
    list_users,
    logout,
    set_active,
    set_password,
)
from medcl.review.db import Audit, AuthSession, Store, User
from medcl.review.errors import AuthError, PermissionDeniedError, ReviewError

from .helpers import PASSWORD

T0 = datetime(2025, 1, 1, 8, 0, 0)


def test_password_is_hashed_with_argon2id_and_never_logged(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    create_user(store, "alice", PASSWORD)
    with pytest.raises(AuthError):
        authenticate(store, "alice", "wrong " + PASSWORD)
    info = authenticate(store, "alice", PASSWORD)
    with store.session() as session:
        row = session.scalar(select(User).where(User.username == "alice"))
        stored = session.scalar(select(AuthSession.token_hash))
        audit_text = " ".join(str(a.detail) for a in session.scalars(select(Audit)))
    assert row is not None and row.password_hash.startswith("$argon2id$")
    assert PASSWORD not in row.password_hash
    assert stored != info.token and len(stored or "") == 64  # only the SHA-256 is kept
    assert PASSWORD not in caplog.text and PASSWORD not in audit_text
    assert info.token not in caplog.text


def test_password_rules_and_duplicates(store: Store) -> None:
    with pytest.raises(ReviewError, match="password must have at least 8 characters"):
        create_user(store, "alice", "short")
    create_user(store, "alice", PASSWORD)
    with pytest.raises(ReviewError, match="user 'alice' already exists"):
        create_user(store, "alice", PASSWORD)
    with pytest.raises(ReviewError, match="role must be one of reviewer, admin"):
        create_user(store, "carol", PASSWORD, role="boss")


def test_unknown_user_and_wrong_password_get_the_same_message(store: Store) -> None:
    create_user(store, "alice", PASSWORD)
    messages = []
    for name, password in (("nobody", PASSWORD), ("alice", "not the password")):
        with pytest.raises(AuthError) as err:
            authenticate(store, name, password)
        messages.append(str(err.value))
    assert messages == [INVALID_LOGIN, INVALID_LOGIN] == ["invalid username or password"] * 2


def test_lockout_after_five_failures(store: Store) -> None:
    create_user(store, "alice", PASSWORD)
    for i in range(4):
        with pytest.raises(AuthError, match=INVALID_LOGIN):
            authenticate(store, "alice", "bad password", now=T0 + timedelta(seconds=i))
    authenticate(store, "alice", PASSWORD, now=T0 + timedelta(seconds=5))  # resets the count
    for i in range(5):
        with pytest.raises(AuthError, match=INVALID_LOGIN):
            authenticate(store, "alice", "bad password", now=T0 + timedelta(seconds=10 + i))
    # locked at 08:00:14 for 15 minutes: even the right password is refused, with the same
    # message as a wrong password (issue 14: a locked account must not tell that it exists)
    with pytest.raises(AuthError, match=f"^{INVALID_LOGIN}$"):
        authenticate(store, "alice", PASSWORD, now=T0 + timedelta(minutes=10))
    with pytest.raises(AuthError, match=f"^{INVALID_LOGIN}$"):
        authenticate(store, "alice", PASSWORD, now=T0 + timedelta(minutes=15, seconds=13))
    ok = authenticate(store, "alice", PASSWORD, now=T0 + timedelta(minutes=16))
    assert ok.user.username == "alice"


def test_session_expiry_and_logout(store: Store) -> None:
    create_user(store, "alice", PASSWORD)
    s = authenticate(store, "alice", PASSWORD, now=T0, session_hours=8)
    assert s.expires == T0 + timedelta(hours=8)
    assert get_session_user(store, s.token, now=T0 + timedelta(hours=7, minutes=59)) == s.user
    assert get_session_user(store, s.token, now=T0 + timedelta(hours=8)) is None
    assert get_session_user(store, "not-a-token", now=T0) is None
    s2 = authenticate(store, "alice", PASSWORD, now=T0)
    logout(store, s2.token, now=T0)
    assert get_session_user(store, s2.token, now=T0 + timedelta(minutes=1)) is None
    with store.session() as session:
        actions = [a.action for a in session.scalars(select(Audit).order_by(Audit.id))]
    assert actions == ["add_user", "login", "login", "logout"]


def test_deactivation_ends_sessions_and_blocks_login(store: Store) -> None:
    admin = create_user(store, "root", PASSWORD, role="admin")
    create_user(store, "alice", PASSWORD)
    s = authenticate(store, "alice", PASSWORD)
    assert set_active(store, admin, "alice", False).active is False
    assert get_session_user(store, s.token) is None
    with pytest.raises(AuthError, match=r"^account is deactivated$"):
        authenticate(store, "alice", PASSWORD)
    with pytest.raises(AuthError, match=INVALID_LOGIN):  # wrong password tells nothing more
        authenticate(store, "alice", "bad password")
    set_active(store, admin, "alice", True)
    assert authenticate(store, "alice", PASSWORD).user.active


def test_admin_only_functions(store: Store) -> None:
    admin = create_user(store, "root", PASSWORD, role="admin")
    alice = create_user(store, "alice", PASSWORD)
    with pytest.raises(PermissionDeniedError, match="user 'alice' is not an admin"):
        list_users(store, alice)
    with pytest.raises(PermissionDeniedError):
        set_active(store, alice, "root", False)
    with pytest.raises(PermissionDeniedError):
        create_user(store, "eve", PASSWORD, actor=alice)
    assert [u.username for u in list_users(store, admin)] == ["alice", "root"]


def test_set_password_revokes_sessions(store: Store) -> None:
    alice = create_user(store, "alice", PASSWORD)
    s = authenticate(store, "alice", PASSWORD)
    set_password(store, alice, "alice", "a brand new password")
    assert get_session_user(store, s.token) is None
    with pytest.raises(AuthError):
        authenticate(store, "alice", PASSWORD)
    assert authenticate(store, "alice", "a brand new password").user == alice
