"""Alembic environment: migrates the connection it is handed, or the configured database."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from ledger.settings import Settings
from ledger.store.db import make_engine


def _run(connection: Connection) -> None:
    context.configure(connection=connection, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = make_engine(Settings().resolved_database_url)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()
