"""Lock-out under parallel guessing, and one answer (same message, same work) for every refusal.

Both on SQLite and PostgreSQL: 10 processes x 5 wrong passwords at one account check exactly 5
passwords; after that even the right password is refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from medcl.review import auth
from medcl.review.auth import INVALID_LOGIN, MAX_FAILED_LOGINS, authenticate, create_user
from medcl.review.db import Audit, Store, User
from medcl.review.errors import AuthError

from .helpers import PASSWORD

WORKER = Path(__file__).with_name("auth_worker.py")
N_PROCS = 10
GUESSES = 5
T0 = datetime(2025, 1, 1, 8, 0, 0)


def test_parallel_guesses_check_at_most_five_passwords(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    create_user(store, "alice", PASSWORD)
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), store_url, "alice", str(GUESSES), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(N_PROCS)
    ]
    for p in procs:  # every process has its store open before any guesses
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready", p.stderr.read() if p.stderr else ""
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    checked = sum(r["checked"] for r in results)
    print(f"\n{store.engine.dialect.name}: {N_PROCS} x {GUESSES} guesses, {checked} checked")
    assert checked == MAX_FAILED_LOGINS
    # every refused guess did the same work: a dummy hash check
    assert sum(r["dummy"] for r in results) == N_PROCS * GUESSES - MAX_FAILED_LOGINS
    assert {m for r in results for m in r["messages"]} == {INVALID_LOGIN}
    with pytest.raises(AuthError, match=f"^{INVALID_LOGIN}$"):
        authenticate(store, "alice", PASSWORD)  # locked: the right password is refused too
    with store.session() as session:
        row = session.scalars(select(User).where(User.username == "alice")).one()
        audit = session.scalars(select(Audit).order_by(Audit.id)).all()
    assert row.locked_until is not None
    lockouts = [a for a in audit if a.action == "lockout"]
    assert len(lockouts) == 1 and lockouts[0].username == "alice"
    assert lockouts[0].detail["failures"] == MAX_FAILED_LOGINS
    reasons = [a.detail.get("reason") for a in audit if a.action == "login_failed"]
    assert reasons.count("wrong password") == MAX_FAILED_LOGINS
    assert reasons.count("locked") == N_PROCS * GUESSES - MAX_FAILED_LOGINS + 1


class _Counting(PasswordHasher):
    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.verified: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verified.append("dummy" if hash == auth._DUMMY_HASH else "real")
        return super().verify(hash, password)


def test_unknown_wrong_and_locked_answer_alike(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    hasher = _Counting()
    monkeypatch.setattr(auth, "_hasher", hasher)
    monkeypatch.setattr(auth, "_DUMMY_HASH", hasher.hash("dummy password"))
    create_user(store, "alice", PASSWORD)
    create_user(store, "bob", PASSWORD)
    for i in range(MAX_FAILED_LOGINS):  # lock bob
        with pytest.raises(AuthError):
            authenticate(store, "bob", "bad password", now=T0 + timedelta(seconds=i))
    answers = {}
    for case, (name, password) in {
        "unknown user": ("nobody", PASSWORD),
        "wrong password": ("alice", "bad password"),
        "locked, right password": ("bob", PASSWORD),
        "locked, wrong password": ("bob", "bad password"),
    }.items():
        hasher.verified.clear()
        with pytest.raises(AuthError) as err:
            authenticate(store, name, password, now=T0 + timedelta(minutes=1))
        answers[case] = (str(err.value), list(hasher.verified))
    assert answers == {
        "unknown user": (INVALID_LOGIN, ["dummy"]),
        "wrong password": (INVALID_LOGIN, ["real"]),
        "locked, right password": (INVALID_LOGIN, ["dummy"]),
        "locked, wrong password": (INVALID_LOGIN, ["dummy"]),
    }
    # the dummy hash costs what a real one does (same argon2 parameters)
    with store.session() as session:
        real = session.scalar(select(User.password_hash).where(User.username == "alice"))
    assert real is not None
    assert real.split("$")[:4] == auth._DUMMY_HASH.split("$")[:4]


def test_lockout_is_audited_and_a_success_resets_the_count(store: Store) -> None:
    create_user(store, "alice", PASSWORD)
    for i in range(MAX_FAILED_LOGINS - 1):
        with pytest.raises(AuthError):
            authenticate(store, "alice", "bad password", now=T0 + timedelta(seconds=i))
    authenticate(store, "alice", PASSWORD, now=T0 + timedelta(seconds=10))
    with store.session() as session:
        row = session.scalars(select(User).where(User.username == "alice")).one()
        assert (row.failed_logins, row.locked_until) == (0, None)
    for i in range(MAX_FAILED_LOGINS):
        with pytest.raises(AuthError):
            authenticate(store, "alice", "bad password", now=T0 + timedelta(seconds=20 + i))
    with store.session() as session:
        lockout = session.scalars(select(Audit).where(Audit.action == "lockout")).one()
    assert lockout.detail == {
        "failures": MAX_FAILED_LOGINS,
        "locked_until": (T0 + timedelta(seconds=24, minutes=15)).isoformat(),
    }
