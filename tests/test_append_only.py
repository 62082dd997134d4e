"""The database itself refuses to change or remove the log (SPEC §2.5), on both engines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError

from ledger.consent.decisions import DecisionRequest
from ledger.demo import write_csv
from ledger.service import BuildItem, ConsentLedger
from ledger.store.schema import (
    APPEND_ONLY_TABLES,
    CheckpointRow,
    DatasetLeaves,
    LogEntryRow,
    MerkleNode,
    MerkleTile,
)
from ledger.verify import verify_ledger

ACTOR = "ops"
MODELS = {
    "log_entries": LogEntryRow,
    "merkle_nodes": MerkleNode,
    "merkle_tiles": MerkleTile,
    "checkpoints": CheckpointRow,
    "dataset_leaves": DatasetLeaves,
}

# Per table: an UPDATE of one row and of every row, and a DELETE of one row and of every
# row (`DELETE FROM t` is SQLite's TRUNCATE).
STATEMENTS: dict[str, dict[str, str]] = {
    "log_entries": {
        "UPDATE one": "UPDATE log_entries SET kind = 'subject.erased' WHERE seq = 2",
        "UPDATE all": "UPDATE log_entries SET canonical = canonical",
        "DELETE one": "DELETE FROM log_entries WHERE seq = (SELECT MAX(seq) FROM log_entries)",
        "DELETE all": "DELETE FROM log_entries",
    },
    "merkle_nodes": {
        "UPDATE one": "UPDATE merkle_nodes SET hash = :forged WHERE level = 0 AND idx = 0",
        "UPDATE all": "UPDATE merkle_nodes SET idx = idx + 1000",
        "DELETE one": "DELETE FROM merkle_nodes WHERE level = 1 AND idx = 0",
        "DELETE all": "DELETE FROM merkle_nodes",
    },
    "merkle_tiles": {
        "UPDATE one": "UPDATE merkle_tiles SET hashes = :forged WHERE level = 0 AND idx = 0",
        "UPDATE all": "UPDATE merkle_tiles SET idx = idx + 1000",
        "DELETE one": "DELETE FROM merkle_tiles WHERE level = 0 AND idx = 0",
        "DELETE all": "DELETE FROM merkle_tiles",
    },
    "checkpoints": {
        "UPDATE one": "UPDATE checkpoints SET note = 'forged' WHERE tree_size = 2",
        "UPDATE all": "UPDATE checkpoints SET root = :forged",
        "DELETE one": "DELETE FROM checkpoints WHERE tree_size = "
        "(SELECT MAX(tree_size) FROM checkpoints)",
        "DELETE all": "DELETE FROM checkpoints",
    },
    # A build's leaf hashes are kept for good: `members_root` stays recomputable (SPEC §7.1).
    "dataset_leaves": {
        "UPDATE one": "UPDATE dataset_leaves SET hashes = :forged WHERE chunk = 0",
        "UPDATE all": "UPDATE dataset_leaves SET root = root",
        "DELETE one": "DELETE FROM dataset_leaves WHERE chunk = 1",
        "DELETE all": "DELETE FROM dataset_leaves",
    },
}
CASES = [
    pytest.param(table, statement, id=f"{table}-{name.replace(' ', '-')}")
    for table, statements in STATEMENTS.items()
    for name, statement in statements.items()
]


@pytest.fixture
def busy_ledger(ledger: ConsentLedger, tmp_path: Path) -> ConsentLedger:
    """A ledger with a few appends beyond genesis, so every table has several rows (an
    import of 300 rows completes a tile; a build of 300 records fills two leaf chunks)."""
    ledger.import_file(write_csv(tmp_path / "consents.csv", 300), actor=ACTOR)
    ledger.register_subject("alice", jurisdiction="US", actor=ACTOR)
    ledger.record_consents(
        "alice",
        [DecisionRequest("content.public", "granted"), DecisionRequest("profile", "denied")],
        actor=ACTOR,
    )
    ledger.rotate_key(actor=ACTOR)
    # A build of 300 of alice's posts: two chunks of leaves (256 and 44).
    with ledger.dataset_recorder("posts", "1", actor=ACTOR) as recorder:
        recorder.check(
            [BuildItem(n, f"post-{n:03}", "alice", "content.public") for n in range(300)]
        )
        assert recorder.finish().summary.records == 300
    return ledger


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as connection:
        return {
            table: [
                tuple(row)
                for row in connection.execute(
                    select(MODELS[table].__table__).order_by(
                        *MODELS[table].__table__.primary_key.columns
                    )
                )
            ]
            for table in APPEND_ONLY_TABLES
        }


@pytest.mark.parametrize(("table", "statement"), CASES)
def test_database_refuses_update_and_delete_on_the_log(
    busy_ledger: ConsentLedger, table: str, statement: str
) -> None:
    engine = busy_ledger.engine
    before = snapshot(engine)
    operation = statement.split()[0]

    with pytest.raises(DBAPIError, match=f"{table} is append-only: {operation} refused"):
        with engine.begin() as connection:
            connection.execute(text(statement), {"forged": b"\x00" * 32})

    assert snapshot(engine) == before
    verify_ledger(engine)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize(
    ("statement", "table"),
    [
        *[pytest.param(f"TRUNCATE {t}", t, id=t) for t in APPEND_ONLY_TABLES],
        pytest.param("TRUNCATE checkpoints CASCADE", "checkpoints", id="cascade"),
        pytest.param(
            "TRUNCATE log_entries, merkle_nodes, checkpoints", "log_entries", id="all-at-once"
        ),
    ],
)
def test_postgresql_refuses_truncate_on_the_log(
    busy_ledger: ConsentLedger, statement: str, table: str
) -> None:
    engine = busy_ledger.engine
    before = snapshot(engine)

    with pytest.raises(DBAPIError, match=f"{table} is append-only: TRUNCATE refused"):
        with engine.begin() as connection:
            connection.execute(text(statement))

    assert snapshot(engine) == before
    verify_ledger(engine)


def test_ledger_keeps_appending_after_a_refused_change(busy_ledger: ConsentLedger) -> None:
    engine = busy_ledger.engine
    size = busy_ledger.tree_size()
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
        connection.execute(text("DELETE FROM log_entries"))

    sealed = busy_ledger.register_subject("bob", actor=ACTOR)

    assert sealed is not None
    assert sealed.tree_size == size + 1
    assert verify_ledger(engine).entries == size + 1
