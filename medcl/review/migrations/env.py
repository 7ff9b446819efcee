"""Alembic environment of the review store.

:meth:`medcl.review.db.Store.upgrade` passes an open connection in
``config.attributes["connection"]``; no ``alembic.ini`` is needed. Run by hand with
``medcl review db upgrade``.
"""

from __future__ import annotations

from alembic import context

from medcl.review.db import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    """Migrate over the connection the store handed in."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run the review migrations through medcl.review.db.Store.open")
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
