"""Bring a database's schema to the latest Alembic revision."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect, text

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config() -> Config:
    # Imported here: Alembic costs a quarter of a second at start-up, and
    # only `init` and upgrades need it.
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade_schema(engine: Engine) -> None:
    """Run every pending migration in one transaction (both engines have transactional DDL)."""
    from alembic import command

    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


# The newest revision in `migrations/versions` (a test keeps the two in step), so that
# an up-to-date database costs one query to recognise, not Alembic's start-up.
HEAD_REVISION = "0007"


def schema_revision(engine: Engine) -> str | None:
    """The database's Alembic revision (None: no ledger schema in it)."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade_if_behind(engine: Engine) -> bool:
    """Bring a ledger's schema up to date if it is behind this code; True if it was."""
    revision = schema_revision(engine)
    if revision is None or revision == HEAD_REVISION:
        return False
    upgrade_schema(engine)
    return True
