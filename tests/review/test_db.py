"""Store: migrations build the schema the models describe; audit is append-only in the database."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError

from medcl.review.db import Audit, Base, Store, add_audit

TABLES = {"users", "sessions", "cases", "predictions", "reviews", "audit", "alembic_version"}
TABLES |= {"settings", "extra_labels"}  # 0002: blind review, added correction labels


def test_migrations_create_the_schema(store: Store) -> None:
    with store.engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) == TABLES
        assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [("0002",)]
        # the hand-written migration and the ORM models describe the same schema
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        case_indexes = {i["name"] for i in inspect(conn).get_indexes("cases")}
    assert {"ix_cases_status", "ix_cases_kind", "ix_cases_site", "ix_cases_updated"} <= case_indexes


def test_open_twice_is_a_no_op(store: Store, store_url: str, tmp_path: Path) -> None:
    with store.session(write=True) as session:
        add_audit(session, "import", user_id=None, username="system", detail={"n": 1})
    again = Store.open(store_url, allowed_roots=[tmp_path])
    with again.session() as session:
        assert [a.detail for a in session.query(Audit).all()] == [{"n": 1}]
    with again.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    again.close()


def test_sqlite_pragmas(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'sub' / 'r.db'}", allowed_roots=[tmp_path])
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    store.close()


def test_default_url_is_the_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDCL_REVIEW_DB", raising=False)
    monkeypatch.delenv("MEDCL_DATA", raising=False)
    store = Store.open(workspace=tmp_path / "ws")
    assert (tmp_path / "ws" / "review" / "review.db").is_file()
    assert store.roots == [(tmp_path / "ws").resolve()]
    store.close()


@pytest.mark.parametrize("statement", ["UPDATE audit SET action = 'x'", "DELETE FROM audit"])
def test_audit_is_append_only(store: Store, statement: str) -> None:
    with store.session(write=True) as session:
        add_audit(session, "login", user_id=None, username="someone")
    with pytest.raises(DBAPIError, match="audit is append-only"), store.engine.begin() as conn:
        conn.execute(text(statement))
    with store.session() as session:
        rows = session.query(Audit).all()
    assert [(a.action, a.username) for a in rows] == [("login", "someone")]


def test_audit_truncate_refused_on_postgres(store: Store) -> None:
    if store.is_sqlite:
        pytest.skip("SQLite has no TRUNCATE")
    with store.session(write=True) as session:
        add_audit(session, "login", user_id=None, username="someone")
    with pytest.raises(DBAPIError, match="audit is append-only"), store.engine.begin() as conn:
        conn.execute(text("TRUNCATE audit"))
