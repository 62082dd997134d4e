"""Database fixtures: every storage test runs on SQLite and on PostgreSQL.

Each test gets its own freshly migrated database: a copy of a template
migrated once per session with `alembic upgrade head` (so the migrations are
exercised on every run), cloned per test with `CREATE DATABASE … TEMPLATE` on
PostgreSQL and a file copy on SQLite. Tests commit for real, so tests of
concurrent processes and crashes see exactly what production would.

PostgreSQL comes from CONSENT_LEDGER_TEST_POSTGRES_URL (default: the local
trust-auth server). If it is unreachable the PostgreSQL cases are skipped,
with the reason shown — unless CONSENT_LEDGER_REQUIRE_POSTGRES=1 (as in CI),
which turns that into a failure.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ledger.service import ConsentLedger
from ledger.settings import Settings
from ledger.store.db import make_engine
from ledger.store.migrate import upgrade_schema

PG_URL = os.environ.get(
    "CONSENT_LEDGER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REQUIRE_PG = os.environ.get("CONSENT_LEDGER_REQUIRE_POSTGRES") == "1"
ENGINES = ("sqlite", "postgresql")
TEST_ORIGIN = "test.example/ledger"


def _admin_engine():  # type: ignore[no-untyped-def]
    return create_engine(PG_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})


def _postgres_problem() -> str | None:
    try:
        engine = _admin_engine()
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure to connect means "no PostgreSQL here"
        return f"PostgreSQL not reachable at {make_url(PG_URL).render_as_string()}: {exc}"
    return None


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    problem = _postgres_problem()
    if problem:
        if REQUIRE_PG:
            pytest.fail(f"CONSENT_LEDGER_REQUIRE_POSTGRES=1 but {problem}")
        pytest.skip(f"skipped PostgreSQL: {problem}")
    name = f"cl_template_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = _admin_engine()
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_URL).set(database=name)
    engine = make_engine(url.render_as_string(hide_password=False))
    upgrade_schema(engine)
    engine.dispose()
    yield name
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "ledger.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade_schema(engine)
    with engine.connect() as connection:
        # Fold the WAL into the main file so that a plain copy is complete.
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


@pytest.fixture(params=ENGINES)
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[str]:
    """A fresh, migrated, empty database on each engine."""
    if request.param == "sqlite":
        path = tmp_path / "ledger.db"
        shutil.copyfile(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    template = request.getfixturevalue("postgres_template")
    name = f"cl_test_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine()
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(home=tmp_path / "home", database_url=database_url)


@pytest.fixture
def ledger(settings: Settings) -> Iterator[ConsentLedger]:
    """An initialised ledger (genesis entries, default policy, signing key)."""
    instance, _ = ConsentLedger.initialize(settings, origin=TEST_ORIGIN, actor="test")
    yield instance
    instance.close()
