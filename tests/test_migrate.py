"""Schema upgrades: a database made by an older release is brought up to date when a
command opens it, and its log keeps verifying across the change, on both engines."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory

from ledger.demo import write_csv
from ledger.service import ConsentLedger
from ledger.store.db import SQLITE_PAGE_SIZE
from ledger.store.migrate import HEAD_REVISION, alembic_config, schema_revision
from ledger.verify import verify_ledger


def test_head_revision_is_the_newest_migration() -> None:
    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD_REVISION


def test_a_database_from_before_merkle_tiles_is_upgraded_and_keeps_verifying(
    ledger: ConsentLedger, tmp_path: Path
) -> None:
    config = alembic_config()
    with ledger.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0004")
    assert schema_revision(ledger.engine) == "0004"

    assert ledger.upgrade_if_behind()
    assert schema_revision(ledger.engine) == HEAD_REVISION
    assert not ledger.upgrade_if_behind()
    # The first tile holds the genesis entries' nodes, stored one by one before the
    # upgrade, and the import's.
    ledger.import_file(write_csv(tmp_path / "consents.csv", 300), actor="ops")
    verify_ledger(ledger.engine)


def test_a_new_sqlite_database_has_16_kb_pages_and_a_wal(ledger: ConsentLedger) -> None:
    if ledger.engine.dialect.name != "sqlite":
        pytest.skip("page size and journal mode are SQLite's")
    with ledger.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA page_size").scalar() == SQLITE_PAGE_SIZE
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
