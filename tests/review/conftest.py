"""Review-store fixtures: every ``store`` test runs on SQLite and on PostgreSQL.

PostgreSQL: ``$MEDCL_TEST_POSTGRES_URL`` when set, else a throwaway cluster started once per test
session with ``initdb``/``pg_ctl`` from ``/usr/lib/postgresql/*/bin`` or PATH (as the ``postgres``
user when running as root; unix socket in a temporary folder, fsync off). Each test gets its own
schema (dropped afterwards). Without PostgreSQL binaries the postgres variants are skipped with a
reason, which fails the run under CI (tests/skip_guard.py).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from sqlalchemy import create_engine, text

from medcl.review import auth
from medcl.review.auth import UserInfo, create_user
from medcl.review.db import Store
from medcl.review.importer import import_predictions

from .helpers import PASSWORD, prediction


def _pg_bin() -> Path | None:
    """Folder of the newest Debian PostgreSQL's initdb, else of the initdb on PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).resolve().parent if on_path else None


def _as_pg_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@pytest.fixture(scope="session")
def pg_base_url() -> Iterator[str]:
    """URL of a PostgreSQL database the tests may create schemas in."""
    given = os.environ.get("MEDCL_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip(
            "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin or on PATH "
            "(sudo apt-get install -y postgresql, or set MEDCL_TEST_POSTGRES_URL)"
        )
    if os.geteuid() == 0 and subprocess.run(["id", "postgres"], capture_output=True).returncode:
        pytest.skip("running as root and no 'postgres' user to run initdb as")
    tmp = Path(tempfile.mkdtemp(prefix="medcl-pg-"))
    tmp.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres", "postgres")
    data, log = tmp / "data", tmp / "server.log"
    user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")
    subprocess.run(
        _as_pg_user(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                user,
                "--no-sync",
                "-E",
                "UTF8",
            ]
        ),
        check=True,
        capture_output=True,
    )
    opts = f"-k {tmp} -c listen_addresses='' -F -c max_connections=50"
    subprocess.run(
        _as_pg_user(
            [str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(log), "-w", "start"]
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://{user}@/postgres?host={tmp}"
    finally:
        subprocess.run(
            _as_pg_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL: SQLite in tmp_path, or a new PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'review.db'}"
        return
    base = request.getfixturevalue("pg_base_url")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def store(store_url: str, tmp_path: Path) -> Iterator[Store]:
    """A migrated store whose only allowed artifact root is ``tmp_path``."""
    s = Store.open(store_url, allowed_roots=[tmp_path])
    yield s
    s.close()


@pytest.fixture(autouse=True)
def fast_hasher(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2id with small costs, so tests that hash many passwords stay fast."""
    fast = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(auth, "_hasher", fast)
    monkeypatch.setattr(auth, "_DUMMY_HASH", fast.hash("dummy password"))


@pytest.fixture
def reviewer(store: Store) -> UserInfo:
    return create_user(store, "alice", PASSWORD)


@pytest.fixture
def reviewer2(store: Store) -> UserInfo:
    return create_user(store, "bob", PASSWORD)


@pytest.fixture
def admin(store: Store) -> UserInfo:
    return create_user(store, "root", PASSWORD, role="admin")


@pytest.fixture
def write_predictions(tmp_path: Path) -> Callable[..., Path]:
    """``write_predictions(records, name=...)`` -> a predictions.jsonl in tmp_path."""

    def write(records: list[dict[str, Any] | str], name: str = "predictions.jsonl") -> Path:
        path = tmp_path / name
        lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    return write


@pytest.fixture
def seeded(store: Store, write_predictions: Callable[..., Path]) -> Store:
    """Five cases: three retrieval (two sites), one slide, one volume, distinct uncertainty."""
    recs = [
        prediction("r1", uncertainty=0.10, site="trunk"),
        prediction("r2", uncertainty=0.50, site="face", label="mel"),
        prediction("r3", uncertainty=0.30, site="trunk", model="other"),
        prediction("s1", "slide", uncertainty=0.90, label="tumor"),
        prediction("v1", "volume", uncertainty=0.70, label="liver"),
    ]
    result = import_predictions(store, None, write_predictions(recs))
    assert result.created == 5 and not result.errors
    return store
