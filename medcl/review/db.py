"""Tables of the review store and :class:`Store`, the handle every review function takes.

One store is one database: SQLite (default ``<workspace>/review/review.db``; WAL journal, foreign
keys on, a busy timeout, write transactions started with ``BEGIN IMMEDIATE`` so two writers queue
instead of failing) or PostgreSQL (``postgresql+psycopg://...``). :meth:`Store.open` runs the
Alembic migrations shipped in ``medcl/review/migrations`` up to head; opening twice is a no-op.

All times are naive UTC ``datetime`` values (the same on both databases).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from medcl.errors import InvalidInputError, MedclError
from medcl.review.errors import StoreBusyError
from medcl.workspace import data_root, workspace_root

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 30_000
BUSY_MESSAGE = (
    "the review database is busy (another program has been writing to it for more than "
    f"{SQLITE_BUSY_TIMEOUT_MS // 1000} s); please try again in a moment"
)
CASE_STATUSES = ("pending", "accepted", "rejected", "corrected")
DECISIONS = ("accept", "reject", "correct")
ROLES = ("reviewer", "admin")
KINDS = ("volume", "slide", "retrieval")


def utcnow() -> datetime:
    """The current time as a naive UTC datetime (how the store keeps times)."""
    return datetime.now(UTC).replace(tzinfo=None)


def as_utc(value: datetime | None) -> datetime:
    """``value`` as naive UTC (aware values converted); ``None`` -> now."""
    if value is None:
        return utcnow()
    if value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


class Base(DeclarativeBase):
    """Declarative base of the review tables."""


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16), default="reviewer")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class AuthSession(Base):
    __tablename__ = "sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires: Mapped[datetime] = mapped_column(DateTime)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Case(Base):
    __tablename__ = "cases"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_key: Mapped[str] = mapped_column(String(512), unique=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    site: Mapped[str] = mapped_column(String(128), default="", index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    version: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)


class Prediction(Base):
    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("case_id", "model", "model_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    model: Mapped[str] = mapped_column(String(128), index=True)
    model_version: Mapped[str] = mapped_column(String(128))
    label: Mapped[str] = mapped_column(String(256))
    scores: Mapped[dict[str, Any]] = mapped_column(JSON)
    uncertainty: Mapped[float] = mapped_column(Float, index=True)
    artifacts: Mapped[dict[str, Any]] = mapped_column(JSON)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Review(Base):
    __tablename__ = "reviews"
    # one review per case version: a second writer of the same version fails in the database too
    __table_args__ = (UniqueConstraint("case_id", "case_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    decision: Mapped[str] = mapped_column(String(16))
    corrected_label: Mapped[str | None] = mapped_column(String(256), nullable=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    confidence: Mapped[int | None] = mapped_column(Integer, nullable=True)
    case_version: Mapped[int] = mapped_column(Integer)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Audit(Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    username: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(32), index=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), nullable=True, index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


class Setting(Base):
    """One project setting (e.g. ``blind_review``); absent rows take their defaults."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    updated: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(64))


class ExtraLabel(Base):
    """A correction label an admin added to the class map of the model ``model``."""

    __tablename__ = "extra_labels"
    __table_args__ = (UniqueConstraint("model", "label"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(128), index=True)
    label: Mapped[str] = mapped_column(String(256))
    added_by: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


def add_audit(
    session: Session,
    action: str,
    *,
    user_id: int | None,
    username: str,
    case_id: int | None = None,
    detail: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> None:
    """Append one audit row in ``session`` (the only way the code writes the audit table)."""
    session.add(
        Audit(
            time=as_utc(now),
            user_id=user_id if user_id else None,
            username=username,
            action=action,
            case_id=case_id,
            detail=detail or {},
        )
    )


_SECRET_PARAMS = ("pass", "pwd", "secret", "token", "key")


def redact_url(url: str) -> str:
    """``url`` safe to show: the password hidden by SQLAlchemy's own redaction
    (``render_as_string(hide_password=True)``) and every query parameter whose name suggests a
    secret (``password=``, ``sslpassword=``, ``token=``, ...) replaced by ``***``."""
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - never echo what could not be parsed
        return "<database URL that cannot be parsed>"
    query = {
        k: ("***" if any(s in k.lower() for s in _SECRET_PARAMS) else v)
        for k, v in parsed.query.items()
    }
    shown = parsed.set(query=query).render_as_string(hide_password=True)
    return shown.replace("=%2A%2A%2A", "=***")  # the query's mask as readable as the password's


def url_secrets(url: str) -> list[str]:
    """The password and secret query values of ``url`` (to scrub them from error messages)."""
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001
        return [url]
    found = [parsed.password] if parsed.password else []
    for k, v in parsed.query.items():
        if any(s in k.lower() for s in _SECRET_PARAMS):
            found += [v] if isinstance(v, str) else list(v)
    return [str(s) for s in found if s]


def default_url(workspace: Path | None = None) -> str:
    """``$MEDCL_REVIEW_DB`` if set, else SQLite at ``<workspace>/review/review.db``."""
    env = os.environ.get("MEDCL_REVIEW_DB")
    if env:
        return env
    return f"sqlite:///{workspace_root(workspace) / 'review' / 'review.db'}"


def _default_roots(workspace: Path | None) -> list[Path]:
    roots = [workspace_root(workspace)]
    try:
        data = data_root()
    except MedclError as exc:
        logger.warning("MEDCL_DATA ignored for artifact roots: %s", exc)
        data = None
    if data is not None:
        roots.append(data)
    return roots


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "")
        conn.exec_driver_sql(f"BEGIN {mode}".strip())


@dataclass
class Store:
    """An open review database.

    Attributes:
        engine: the SQLAlchemy engine.
        url: the database URL (password hidden when printed).
        roots: folders artifact files may be opened from (see ``service.artifact_path``).
    """

    engine: Engine
    url: str
    roots: list[Path] = field(default_factory=list)

    @classmethod
    def open(
        cls,
        url: str | None = None,
        *,
        workspace: Path | None = None,
        allowed_roots: Sequence[Path] | None = None,
    ) -> Store:
        """Open (and migrate to head) the store at ``url`` (default: :func:`default_url`)."""
        url = url or default_url(workspace)
        parsed = make_url(url)
        is_sqlite = parsed.get_backend_name() == "sqlite"
        if is_sqlite and parsed.database and parsed.database != ":memory:":
            path = Path(parsed.database)
            if not path.parent.is_dir():
                path.parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {}
        if is_sqlite:
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        else:
            kwargs["pool_pre_ping"] = True
        try:
            engine = create_engine(url, **kwargs)
        except Exception as exc:  # noqa: BLE001 - bad URL, missing driver: one line for users
            raise InvalidInputError(url, f"cannot open the review database ({exc})") from None
        if is_sqlite:
            _sqlite_setup(engine)
        roots = [Path(r).resolve() for r in allowed_roots or _default_roots(workspace)]
        store = cls(engine=engine, url=redact_url(url), roots=roots)
        store.upgrade()
        return store

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def upgrade(self) -> None:
        """Run the Alembic migrations up to head (a no-op when already there)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self.engine.connect() as conn:
            if self.is_sqlite:
                conn = conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        logger.debug("review store %s at head", self.url)

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """One transaction: committed on normal exit, rolled back on an exception.

        ``write=True`` takes SQLite's write lock at the start (``BEGIN IMMEDIATE``), so the
        transaction never has to upgrade a read lock later (which SQLite refuses under load).
        SQLite still locked after the busy timeout raises :class:`StoreBusyError` (one line for
        the user, no traceback).
        """
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                if write and self.is_sqlite:
                    session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})
                yield session
                session.commit()
            except OperationalError as exc:
                session.rollback()
                if "database is locked" in str(exc.orig):
                    raise StoreBusyError(BUSY_MESSAGE) from None
                raise
            except BaseException:
                session.rollback()
                raise

    def close(self) -> None:
        """Release the engine's connections."""
        self.engine.dispose()
