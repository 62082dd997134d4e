"""verify_ledger on both engines: a healthy ledger passes; every kind of tampering is named.

Tampering has to get past the append-only triggers, as an attacker with database
access would: `tamper` drops them (SQLite) or disables them (PostgreSQL) for one
transaction and puts them back.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text

from ledger.consent import entries
from ledger.consent.decisions import DecisionRequest
from ledger.consent.policy import Policy, default_policy
from ledger.consent.projection import Projector
from ledger.demo import write_csv
from ledger.errors import VerificationError
from ledger.service import ConsentLedger
from ledger.service.keys import SigningKey
from ledger.store.db import write_session
from ledger.store.schema import APPEND_ONLY_TABLES, CheckpointRow, LogEntryRow
from ledger.tlog import merkle
from ledger.tlog.log import LogWriter
from ledger.tlog.notes import Checkpoint, b64, sign_checkpoint
from ledger.verify import verify_ledger
from tests.conftest import TEST_ORIGIN

ACTOR = "ops"

Params = dict[str, Any] | list[dict[str, Any]] | None


def tamper(engine: Engine, sql: str, params: Params = None) -> None:
    """Run `sql` with the append-only triggers out of the way, then restore them."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            for table in APPEND_ONLY_TABLES:
                connection.exec_driver_sql(f"ALTER TABLE {table} DISABLE TRIGGER USER")
            connection.execute(text(sql), params or {})
            for table in APPEND_ONLY_TABLES:
                connection.exec_driver_sql(f"ALTER TABLE {table} ENABLE TRIGGER USER")
            return
        names = [f"{t}_no_{op}" for t in APPEND_ONLY_TABLES for op in ("update", "delete")]
        triggers = connection.execute(
            text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
        ).all()
        triggers = [(name, ddl) for name, ddl in triggers if name in names]
        assert sorted(name for name, _ in triggers) == sorted(names)
        for name, _ in triggers:
            connection.exec_driver_sql(f"DROP TRIGGER {name}")
        connection.execute(text(sql), params or {})
        for _, ddl in triggers:
            connection.exec_driver_sql(ddl)


@dataclass
class History:
    """A ledger that has seen every kind of entry, and the seqs worth tampering with."""

    ledger: ConsentLedger
    old_key: SigningKey  # the genesis key, retired by the rotation
    seq: dict[str, int]
    refs: dict[str, str]
    carol_mapping: tuple[str, str, bytes]  # (subject_id, ref, salt) from before her erasure

    @property
    def engine(self) -> Engine:
        return self.ledger.engine


@pytest.fixture
def history(ledger: ConsentLedger) -> History:
    led = ledger
    record = led.record_consents
    old_key = led.signing_key()
    seq: dict[str, int] = {}

    for name, jurisdiction, minor in (
        ("alice", "US", False),
        ("bob", "DE", True),
        ("carol", "GB", False),
    ):
        sealed = led.register_subject(name, jurisdiction=jurisdiction, minor=minor, actor=ACTOR)
        assert sealed is not None
        seq[f"{name}_registered"] = sealed.entries[0].seq
    sealed = record(
        "alice",
        [DecisionRequest("content.public", "granted"), DecisionRequest("biometric", "denied")],
        actor=ACTOR,
    )
    seq["alice_grant"], seq["alice_deny"] = (e.seq for e in sealed.entries)
    seq["bob_grant"] = (
        record("bob", [DecisionRequest("profile", "granted", explicit=True)], actor=ACTOR)
        .entries[0]
        .seq
    )
    sealed = led.register_subject("alice", jurisdiction="FR", actor=ACTOR)
    assert sealed is not None
    seq["alice_updated"] = sealed.entries[0].seq
    document = default_policy().to_document()
    document["version"] = 2
    document["defaults"]["default"]["ai-training"]["content.public"] = "deny"
    seq["policy_2"] = led.publish_policy(Policy.from_document(document), actor=ACTOR).entries[0].seq
    with led.engine.connect() as connection:
        carol = connection.execute(
            text("SELECT subject_id, ref, salt FROM subjects WHERE subject_id = 'carol'")
        ).one()
    seq["carol_erased"] = led.erase_subject("carol", actor=ACTOR).entries[0].seq
    rotation = led.rotate_key(actor=ACTOR)
    seq["key_added"], seq["key_retired"] = (e.seq for e in rotation.entries)
    seq["rotation_checkpoint"] = rotation.tree_size
    seq["alice_withdrawn"] = (
        record("alice", [DecisionRequest("content.public", "withdrawn")], actor=ACTOR)
        .entries[0]
        .seq
    )
    sealed = led.register_subject("dave", jurisdiction="BR", actor=ACTOR)
    assert sealed is not None
    seq["dave_registered"] = sealed.entries[0].seq

    with led.engine.connect() as connection:
        refs = dict(connection.execute(text("SELECT subject_id, ref FROM subjects")).all())
    refs["carol"] = carol.ref
    return History(
        ledger=led,
        old_key=old_key,
        seq=seq,
        refs=refs,
        carol_mapping=(carol.subject_id, carol.ref, bytes(carol.salt)),
    )


def canonical_of(engine: Engine, seq: int) -> bytes:
    with engine.connect() as connection:
        return bytes(
            connection.execute(
                select(LogEntryRow.__table__.c.canonical).where(LogEntryRow.__table__.c.seq == seq)
            ).scalar_one()
        )


def rewrite_entry(engine: Engine, seq: int, old: bytes, new: bytes) -> None:
    canonical = canonical_of(engine, seq)
    assert canonical.count(old) == 1
    tamper(
        engine,
        "UPDATE log_entries SET canonical = :canonical WHERE seq = :seq",
        {"canonical": canonical.replace(old, new), "seq": seq},
    )


def leaf_hashes(engine: Engine) -> list[bytes]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(LogEntryRow.__table__.c.canonical).order_by(LogEntryRow.__table__.c.seq)
        ).scalars()
        return [merkle.leaf_hash(bytes(canonical)) for canonical in rows]


def recompute_tree(engine: Engine, *, levels: int | None = None) -> dict[int, bytes]:
    """Rewrite stored Merkle nodes (up to `levels`, or all) from the stored entries.

    Returns the root at every tree size, as a forger re-signing checkpoints needs.
    """
    builder = merkle.TreeBuilder()
    nodes = []
    roots = {}
    for leaf in leaf_hashes(engine):
        for level, index, node in builder.append(leaf):
            if levels is None or level < levels:
                nodes.append({"level": level, "idx": index, "hash": node})
        roots[builder.size] = builder.root()
    tamper(
        engine, "UPDATE merkle_nodes SET hash = :hash WHERE level = :level AND idx = :idx", nodes
    )
    return roots


def checkpoint_sizes(engine: Engine) -> list[int]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                select(CheckpointRow.__table__.c.tree_size).order_by(
                    CheckpointRow.__table__.c.tree_size
                )
            ).scalars()
        )


def checkpoint_notes(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                select(CheckpointRow.__table__.c.note).order_by(CheckpointRow.__table__.c.tree_size)
            ).scalars()
        )


def resign_checkpoint(engine: Engine, size: int, root: bytes, signers: list[SigningKey]) -> None:
    note = sign_checkpoint(Checkpoint(TEST_ORIGIN, size, root), signers)
    tamper(
        engine,
        "UPDATE checkpoints SET note = :note, root = :root WHERE tree_size = :size",
        {"note": note, "root": root, "size": size},
    )


# --- healthy ------------------------------------------------------------------------------


def test_a_healthy_ledger_verifies(history: History) -> None:
    engine = history.engine
    notes = checkpoint_notes(engine)
    genesis_key = history.old_key.verifier_key

    report = verify_ledger(engine, external_checkpoints=notes, trusted_key=genesis_key)

    size = history.ledger.tree_size()
    assert report.origin == TEST_ORIGIN
    assert (report.entries, report.checkpoints, report.subjects) == (size, len(notes), 3)
    assert report.root == history.ledger.checkpoint().split("\n")[2]
    assert report.external_checkpoints == checkpoint_sizes(engine)
    assert report.to_json()["ok"] is True


def test_a_checkpoint_saved_before_later_writes_still_verifies(history: History) -> None:
    saved = history.ledger.checkpoint()
    history.ledger.record_consents("dave", [DecisionRequest("activity", "denied")], actor=ACTOR)
    history.ledger.rotate_key(actor=ACTOR)

    report = verify_ledger(history.engine, external_checkpoints=[saved])

    assert report.entries == history.ledger.tree_size() > report.external_checkpoints[0]


def test_a_trusted_key_that_never_signed_fails(history: History) -> None:
    stranger = SigningKey.generate(TEST_ORIGIN).verifier_key

    with pytest.raises(VerificationError, match=r"^ledger: the trusted key .* never signed"):
        verify_ledger(history.engine, trusted_key=stranger)


# --- (a, b) entry bytes --------------------------------------------------------------------

SIGNED_ROOT_MISMATCH = (
    r"^checkpoint (\d+): signed root does not match the entries: "
    r"an entry in (\d+)\.\.(\d+) was changed"
)


@pytest.mark.parametrize(
    "levels",
    [
        pytest.param(0, id="bytes-only"),
        pytest.param(1, id="bytes-and-leaf-node"),
        pytest.param(None, id="bytes-and-every-ancestor-node"),
    ],
)
def test_changed_entry_bytes_break_the_signed_checkpoint(
    history: History, levels: int | None
) -> None:
    target = history.seq["alice_grant"]
    rewrite_entry(history.engine, target, b'"actor":"ops"', b'"actor":"eve"')
    if levels != 0:
        recompute_tree(history.engine, levels=levels)

    with pytest.raises(VerificationError, match=SIGNED_ROOT_MISMATCH) as excinfo:
        verify_ledger(history.engine)

    named = re.match(SIGNED_ROOT_MISMATCH, str(excinfo.value))
    assert named is not None
    size, first, last = map(int, named.groups())
    assert first <= target <= last == size - 1
    assert size == min(s for s in checkpoint_sizes(history.engine) if s > target)


def test_non_canonical_entry_bytes_are_named(history: History) -> None:
    target = history.seq["bob_grant"]
    rewrite_entry(history.engine, target, b'{"actor"', b'{ "actor"')

    with pytest.raises(VerificationError, match=f"^entry {target}: bytes changed"):
        verify_ledger(history.engine)


def test_a_changed_decision_in_the_bytes_is_named_by_its_entry(history: History) -> None:
    target = history.seq["alice_grant"]
    rewrite_entry(history.engine, target, b'"decision":"granted"', b'"decision":"denied"')

    with pytest.raises(VerificationError, match=f"^entry {target}: "):
        verify_ledger(history.engine)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        pytest.param(
            "UPDATE merkle_nodes SET hash = :forged WHERE level = 0 AND idx = 3",
            r"^merkle node 0/3: does not match the entries it covers: .* entries 3\.\.3",
            id="leaf-node-changed",
        ),
        pytest.param(
            "UPDATE merkle_nodes SET hash = :forged WHERE level = 2 AND idx = 1",
            r"^merkle node 2/1: does not match the entries it covers: .* entries 4\.\.7",
            id="inner-node-changed",
        ),
        pytest.param(
            "DELETE FROM merkle_nodes WHERE level = 1 AND idx = 2",
            r"^merkle node 1/\d+: is missing",
            id="node-deleted",
        ),
        pytest.param(
            "INSERT INTO merkle_nodes (level, idx, hash) VALUES (0, 1000, :forged)",
            r"^merkle node 0/1000: is missing or extra",
            id="node-added",
        ),
        pytest.param(
            "INSERT INTO merkle_nodes (level, idx, hash) VALUES (40, 0, :forged)",
            r"^merkle node 40/0: is missing or extra",
            id="node-added-above-the-root",
        ),
        pytest.param(
            "UPDATE merkle_nodes SET hash = :short WHERE level = 1 AND idx = 0",
            r"^merkle node 1/0: does not match the entries it covers",
            id="node-truncated",
        ),
    ],
)
def test_tampered_merkle_nodes_are_named(history: History, sql: str, message: str) -> None:
    tamper(history.engine, sql, {"forged": b"\x42" * 32, "short": b"\x42" * 31})

    with pytest.raises(VerificationError, match=message):
        verify_ledger(history.engine)


# --- (c, d) deleted and reordered entries --------------------------------------------------


def test_a_deleted_entry_is_named(history: History) -> None:
    target = history.seq["bob_grant"]
    tamper(history.engine, "DELETE FROM log_entries WHERE seq = :seq", {"seq": target})

    with pytest.raises(
        VerificationError,
        match=f"^entry {target}: is missing \\(the next stored entry is {target + 1}\\)",
    ):
        verify_ledger(history.engine)


def test_an_entry_stored_before_the_start_of_the_log_is_named(history: History) -> None:
    tamper(
        history.engine,
        "INSERT INTO log_entries (seq, kind, subject, canonical) VALUES (-1, 'key.added', NULL, "
        ":canonical)",
        {"canonical": canonical_of(history.engine, 0)},
    )

    with pytest.raises(
        VerificationError, match="^entry -1: is stored before the first entry of the log"
    ):
        verify_ledger(history.engine)


def test_a_deleted_last_entry_leaves_a_checkpoint_that_names_it(history: History) -> None:
    size = history.ledger.tree_size()
    tamper(history.engine, "DELETE FROM log_entries WHERE seq = :seq", {"seq": size - 1})

    with pytest.raises(
        VerificationError,
        match=f"^checkpoint {size}: signs a tree of size {size} but the log has only {size - 1}",
    ):
        verify_ledger(history.engine)


def test_swapped_entries_are_named_as_reordered(history: History) -> None:
    first, second = history.seq["alice_grant"], history.seq["alice_deny"]
    engine = history.engine
    tamper(
        engine,
        "UPDATE log_entries SET canonical = :canonical WHERE seq = :seq",
        [
            {"seq": first, "canonical": canonical_of(engine, second)},
            {"seq": second, "canonical": canonical_of(engine, first)},
        ],
    )

    with pytest.raises(
        VerificationError, match=f"^entry {first}: bytes say seq {second}: entries were reordered"
    ):
        verify_ledger(engine)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        pytest.param(
            "UPDATE log_entries SET kind = 'subject.erased' WHERE seq = :seq",
            "row says kind 'subject.erased' but the bytes say 'consent.recorded'",
            id="kind-column",
        ),
        pytest.param(
            "UPDATE log_entries SET subject = 'someone-else' WHERE seq = :seq",
            "row says subject 'someone-else'",
            id="subject-column",
        ),
    ],
)
def test_entry_columns_that_disagree_with_the_bytes_are_named(
    history: History, sql: str, message: str
) -> None:
    target = history.seq["alice_grant"]
    tamper(history.engine, sql, {"seq": target})

    with pytest.raises(VerificationError, match=f"^entry {target}: {re.escape(message)}"):
        verify_ledger(history.engine)


# --- (e) truncation and rollback -----------------------------------------------------------


def truncate(engine: Engine, size: int) -> None:
    """Remove every trace of the entries from `size` on, as a careful attacker would."""
    builder = merkle.TreeBuilder()
    doomed = []
    for leaf in leaf_hashes(engine):
        for level, index, _ in builder.append(leaf):
            if (index + 1) << level > size:
                doomed.append({"level": level, "idx": index})
    tamper(engine, "DELETE FROM merkle_nodes WHERE level = :level AND idx = :idx", doomed)
    for sql in (
        "DELETE FROM subjects WHERE ref IN "
        "(SELECT subject FROM log_entries WHERE seq >= :size AND kind = 'subject.registered')",
        "DELETE FROM log_entries WHERE seq >= :size",
        "DELETE FROM checkpoints WHERE tree_size > :size",
        "DELETE FROM consent_decisions WHERE seq >= :size",
        "DELETE FROM subject_versions WHERE seq >= :size",
        "DELETE FROM policy_versions WHERE seq >= :size",
        "UPDATE ledger_state SET tree_size = :size",
    ):
        tamper(engine, sql, {"size": size})


def test_truncation_is_caught_by_a_checkpoint_saved_elsewhere(history: History) -> None:
    saved = history.ledger.checkpoint()
    full = history.ledger.tree_size()
    kept = history.seq["alice_withdrawn"]
    truncate(history.engine, kept)

    # Without outside evidence a cleanly truncated log is indistinguishable from a shorter one.
    assert verify_ledger(history.engine).entries == kept
    with pytest.raises(
        VerificationError,
        match=rf"^external checkpoint #1 \(size {full}\): covers {full} entries but the log "
        rf"now holds {kept}: the log was rolled back or truncated",
    ):
        verify_ledger(history.engine, external_checkpoints=[saved])


def test_a_projection_row_before_the_start_of_the_log_fails(history: History) -> None:
    tamper(
        history.engine,
        "INSERT INTO subject_versions (ref, seq, jurisdiction, minor, erased) "
        "VALUES (:ref, -3, 'US', false, false)",
        {"ref": history.refs["alice"]},
    )

    with pytest.raises(
        VerificationError,
        match="^entry -3: subject_versions has a row for entry -3, which the log does not hold",
    ):
        verify_ledger(history.engine)


@pytest.mark.parametrize("table", ["consent_decisions", "subject_versions"])
def test_projection_rows_beyond_the_end_of_the_log_fail(history: History, table: str) -> None:
    kept = history.seq["alice_withdrawn"]
    truncate(history.engine, kept)
    ref = history.refs["alice"]
    stale = {
        "consent_decisions": "INSERT INTO consent_decisions (seq, ref, category, purpose, "
        "decision, explicit, method, notice, effective, expires) VALUES (:seq, :ref, "
        "'content.public', 'ai-training', 'granted', false, 'api', NULL, "
        "'2020-01-01T00:00:00.000000Z', NULL)",
        "subject_versions": "INSERT INTO subject_versions (ref, seq, jurisdiction, minor, erased) "
        "VALUES (:ref, :seq, 'US', false, false)",
    }[table]
    tamper(history.engine, stale, {"seq": kept + 5, "ref": ref})

    with pytest.raises(VerificationError, match=table):
        verify_ledger(history.engine)


# --- (f) forged checkpoints ----------------------------------------------------------------


def checkpoint_root(engine: Engine, size: int) -> bytes:
    with engine.connect() as connection:
        return bytes(
            connection.execute(
                select(CheckpointRow.__table__.c.root).where(
                    CheckpointRow.__table__.c.tree_size == size
                )
            ).scalar_one()
        )


Forgery = Callable[[History], int]


def resigned_by_a_foreign_key(history: History) -> int:
    size = history.seq["alice_updated"] + 1
    root = checkpoint_root(history.engine, size)
    resign_checkpoint(history.engine, size, root, [SigningKey.generate(TEST_ORIGIN)])
    return size


def note_text_altered(history: History) -> int:
    size = history.seq["alice_updated"] + 1
    other_root = b64(checkpoint_root(history.engine, size - 1))
    tamper(
        history.engine,
        "UPDATE checkpoints SET note = REPLACE(note, :root, :other) WHERE tree_size = :size",
        {"root": b64(checkpoint_root(history.engine, size)), "other": other_root, "size": size},
    )
    return size


def signed_by_the_retired_key(history: History) -> int:
    size = history.ledger.tree_size()
    resign_checkpoint(
        history.engine, size, checkpoint_root(history.engine, size), [history.old_key]
    )
    return size


def rotation_signed_by_the_old_key_only(history: History) -> int:
    size = history.seq["rotation_checkpoint"]
    resign_checkpoint(
        history.engine, size, checkpoint_root(history.engine, size), [history.old_key]
    )
    return size


def rotation_checkpoint_deleted(history: History) -> int:
    size = history.seq["rotation_checkpoint"]
    tamper(history.engine, "DELETE FROM checkpoints WHERE tree_size = :size", {"size": size})
    return size + 1  # the next checkpoint, signed by a key nobody vouched for


def wrong_root_signed_by_the_log_key(history: History) -> int:
    size = history.ledger.tree_size()
    resign_checkpoint(history.engine, size, b"\x17" * 32, [history.ledger.signing_key()])
    return size


@pytest.mark.parametrize(
    ("forge", "message"),
    [
        pytest.param(
            resigned_by_a_foreign_key,
            "signature does not verify: .*no signature by a known key",
            id="foreign-key",
        ),
        pytest.param(
            note_text_altered, "signature does not verify: .*does not verify", id="text-altered"
        ),
        pytest.param(
            signed_by_the_retired_key,
            "signature does not verify: .*no signature by a known key",
            id="retired-key",
        ),
        pytest.param(
            rotation_signed_by_the_old_key_only,
            "signature does not verify: .*no signature by a known key",
            id="rotation-missing-new-key",
        ),
        pytest.param(
            rotation_checkpoint_deleted,
            "signature does not verify: .*no signature by a known key",
            id="rotation-checkpoint-deleted",
        ),
        pytest.param(
            wrong_root_signed_by_the_log_key,
            "signed root does not match the entries",
            id="wrong-root-real-key",
        ),
    ],
)
def test_forged_checkpoints_are_named(history: History, forge: Forgery, message: str) -> None:
    size = forge(history)

    with pytest.raises(VerificationError, match=f"^checkpoint {size}: {message}"):
        verify_ledger(history.engine)


def test_a_changed_stored_root_is_named(history: History) -> None:
    size = history.seq["alice_updated"] + 1
    tamper(
        history.engine,
        "UPDATE checkpoints SET root = :root WHERE tree_size = :size",
        {"root": b"\x00" * 32, "size": size},
    )

    with pytest.raises(
        VerificationError, match=f"^checkpoint {size}: signed root does not match the entries"
    ):
        verify_ledger(history.engine)


def test_entries_no_checkpoint_covers_are_named(history: History) -> None:
    size = history.ledger.tree_size()
    tamper(history.engine, "DELETE FROM checkpoints WHERE tree_size = :size", {"size": size})

    with pytest.raises(
        VerificationError,
        match=f"^entry {size - 1}: entries {size - 1}..{size - 1} are not covered by any "
        "checkpoint",
    ):
        verify_ledger(history.engine)


# --- forks ---------------------------------------------------------------------------------


def test_an_external_checkpoint_over_another_root_is_a_fork(history: History) -> None:
    size = history.seq["alice_updated"] + 1
    forged = sign_checkpoint(
        Checkpoint(TEST_ORIGIN, size, b"\x17" * 32), [history.ledger.signing_key()]
    )

    with pytest.raises(
        VerificationError,
        match=rf"^external checkpoint #2 \(size {size}\): its root differs from the log's at "
        r"that size: the log forked",
    ):
        verify_ledger(history.engine, external_checkpoints=[history.ledger.checkpoint(), forged])


def test_history_rewritten_and_resigned_with_the_log_key_is_caught_as_a_fork(
    history: History,
) -> None:
    # The worst case: an attacker holding the signing key rewrites an entry and
    # every node and checkpoint after it. Only a checkpoint saved elsewhere can tell.
    saved = history.ledger.checkpoint()
    target = history.seq["alice_withdrawn"]
    rewrite_entry(history.engine, target, b'"actor":"ops"', b'"actor":"eve"')
    roots = recompute_tree(history.engine)
    for size in checkpoint_sizes(history.engine):
        if size > target:
            resign_checkpoint(history.engine, size, roots[size], [history.ledger.signing_key()])
    verify_ledger(history.engine)

    with pytest.raises(
        VerificationError,
        match=r"^external checkpoint #1 \(size \d+\): its root differs from the log's at that "
        "size: the log forked or was rewritten",
    ):
        verify_ledger(history.engine, external_checkpoints=[saved])


@pytest.mark.parametrize(
    "origin",
    [pytest.param(TEST_ORIGIN, id="same-origin-other-key"), pytest.param("other.example/log")],
)
def test_an_external_checkpoint_not_signed_by_this_log_is_refused(
    history: History, origin: str
) -> None:
    size = history.ledger.tree_size()
    root = checkpoint_root(history.engine, size)
    foreign = sign_checkpoint(Checkpoint(origin, size, root), [SigningKey.generate(origin)])

    with pytest.raises(
        VerificationError,
        match=rf"^external checkpoint #1 \(size {size}\): is not signed by any key of this log",
    ):
        verify_ledger(history.engine, external_checkpoints=[foreign])


def test_an_external_note_that_is_not_a_checkpoint_is_refused(history: History) -> None:
    with pytest.raises(VerificationError, match=r"^external checkpoint #1: is not a checkpoint"):
        verify_ledger(history.engine, external_checkpoints=["hello\n\n— x AAAA\n"])


# --- (g) subject mappings ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        pytest.param(
            "UPDATE subjects SET subject_id = 'mallory' WHERE ref = :ref",
            "mapping row does not open the commitment in entry {seq}: the subject id or salt "
            "was changed",
            id="subject-id",
        ),
        pytest.param(
            "UPDATE subjects SET salt = :salt WHERE ref = :ref",
            "mapping row does not open the commitment in entry {seq}: the subject id or salt "
            "was changed",
            id="salt",
        ),
    ],
)
def test_a_changed_subject_mapping_is_named(history: History, sql: str, message: str) -> None:
    ref = history.refs["alice"]
    tamper(history.engine, sql, {"ref": ref, "salt": b"\x00" * 32})

    expected = message.format(seq=history.seq["alice_registered"])
    with pytest.raises(VerificationError, match=f"^subject {ref}: {re.escape(expected)}"):
        verify_ledger(history.engine)


def test_a_second_registration_of_a_reference_must_be_opened_too(history: History) -> None:
    # Only the signing key's holder (or a bug) could append it: the mapping row
    # must open every registration of its reference, not just the first.
    ledger, ref = history.ledger, history.refs["alice"]
    with write_session(ledger.engine) as session:
        writer = LogWriter.open(session, actor=ACTOR, subject_of=entries.subject_of)
        forged = writer.append(
            "subject.registered",
            {"subject": ref, "commitment": b64(b"\x00" * 32), "jurisdiction": "US", "minor": False},
        )
        writer.seal([ledger.signing_key()], Projector().project)

    with pytest.raises(
        VerificationError,
        match=f"^subject {ref}: mapping row does not open the commitment in entry {forged.seq}",
    ):
        verify_ledger(ledger.engine)


def test_a_mapping_to_an_unknown_reference_is_named(history: History) -> None:
    tamper(
        history.engine,
        "UPDATE subjects SET ref = 'feedfacefeedfacefeedfacefeedface' WHERE ref = :ref",
        {"ref": history.refs["bob"]},
    )

    with pytest.raises(
        VerificationError,
        match="^subject feedfacefeedfacefeedfacefeedface: has no subject.registered entry",
    ):
        verify_ledger(history.engine)


def test_an_erasure_record_pointing_elsewhere_is_named(history: History) -> None:
    erased = history.seq["carol_erased"]
    tamper(
        history.engine,
        "UPDATE erased_subjects SET seq = :other WHERE seq = :seq",
        {"seq": erased, "other": history.seq["bob_grant"]},
    )

    with pytest.raises(
        VerificationError,
        match=f"^entry {history.seq['bob_grant']}: an erasure record points at an entry that "
        "is not subject.erased",
    ):
        verify_ledger(history.engine)


def test_a_mapping_restored_after_erasure_fails(history: History) -> None:
    subject_id, ref, salt = history.carol_mapping
    tamper(
        history.engine,
        "INSERT INTO subjects (subject_id, ref, salt) VALUES (:id, :ref, :salt)",
        {"id": subject_id, "ref": ref, "salt": salt},
    )

    with pytest.raises(VerificationError, match=f"subject {ref}"):
        verify_ledger(history.engine)


def test_a_deleted_erasure_record_fails(history: History) -> None:
    erased = history.seq["carol_erased"]
    tamper(history.engine, "DELETE FROM erased_subjects WHERE seq = :seq", {"seq": erased})

    with pytest.raises(VerificationError, match=f"entry {erased}"):
        verify_ledger(history.engine)


# --- (h) current-state tables --------------------------------------------------------------

PROJECTION_TAMPERING = [
    pytest.param(
        "UPDATE consent_decisions SET decision = 'denied' WHERE seq = :seq",
        "alice_grant",
        "consent_decisions",
        id="decision-flipped",
    ),
    pytest.param(
        "UPDATE consent_decisions SET explicit = true WHERE seq = :seq",
        "alice_grant",
        "consent_decisions",
        id="explicit-flipped",
    ),
    pytest.param(
        "DELETE FROM consent_decisions WHERE seq = :seq",
        "alice_withdrawn",
        "consent_decisions",
        id="decision-deleted",
    ),
    pytest.param(
        "UPDATE subject_versions SET minor = false WHERE seq = :seq",
        "bob_registered",
        "subject_versions",
        id="minor-flipped",
    ),
    pytest.param(
        "UPDATE subject_versions SET jurisdiction = 'US' WHERE seq = :seq",
        "alice_updated",
        "subject_versions",
        id="jurisdiction-changed",
    ),
    pytest.param(
        "UPDATE subject_versions SET erased = false WHERE seq = :seq",
        "carol_erased",
        "subject_versions",
        id="erasure-undone",
    ),
    pytest.param(
        "UPDATE policy_versions SET document = '{}' WHERE seq = :seq",
        "policy_2",
        "policy_versions",
        id="policy-document",
    ),
    pytest.param(
        "INSERT INTO consent_decisions (seq, ref, category, purpose, decision, explicit, method, "
        "notice, effective, expires) SELECT :seq, ref, 'content.public', 'ai-training', "
        "'granted', false, 'api', NULL, '2020-01-01T00:00:00.000000Z', NULL "
        "FROM subjects WHERE subject_id = 'bob'",
        "bob_registered",
        "consent_decisions",
        id="decision-planted",
    ),
]


@pytest.mark.parametrize(("sql", "entry", "table"), PROJECTION_TAMPERING)
def test_current_state_rows_that_differ_from_a_replay_are_named(
    history: History, sql: str, entry: str, table: str
) -> None:
    seq = history.seq[entry]
    tamper(history.engine, sql, {"seq": seq})

    with pytest.raises(
        VerificationError,
        match=f"^entry {seq}: {table} row for entry {seq} differs from a replay of the log",
    ):
        verify_ledger(history.engine)


def test_a_wrong_recorded_tree_size_is_named(history: History) -> None:
    size = history.ledger.tree_size()
    tamper(history.engine, "UPDATE ledger_state SET tree_size = :size", {"size": size - 1})

    with pytest.raises(
        VerificationError, match=f"^ledger: ledger state says {size - 1} entries, the log holds"
    ):
        verify_ledger(history.engine)


def test_tamper_restores_the_append_only_triggers(history: History) -> None:
    tamper(history.engine, "UPDATE ledger_state SET tree_size = tree_size")

    with pytest.raises(Exception, match="append-only"), history.engine.begin() as connection:
        connection.execute(text("DELETE FROM merkle_nodes"))
    verify_ledger(history.engine)


# --- the tree stored in tiles ----------------------------------------------------------------


@pytest.fixture
def tiled(ledger: ConsentLedger, tmp_path: Path) -> Engine:
    """A ledger whose import completed three tiles of level 0 (entries 0..767)."""
    summary = ledger.import_file(write_csv(tmp_path / "consents.csv", 700), actor=ACTOR)
    assert summary.tree_size >= 3 * merkle.TILE_WIDTH
    return ledger.engine


def test_a_log_stored_in_tiles_verifies(tiled: Engine) -> None:
    with tiled.connect() as connection:
        tiles = connection.execute(text("SELECT COUNT(*) FROM merkle_tiles")).scalar()
    assert tiles == 3
    verify_ledger(tiled)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        pytest.param(
            "UPDATE merkle_tiles SET hashes = :forged_tile WHERE level = 0 AND idx = 1",
            r"^merkle tile 0/1: does not match the entries it covers: .* entries 256\.\.511",
            id="tile-changed",
        ),
        pytest.param(
            "UPDATE merkle_tiles SET hashes = :short WHERE level = 0 AND idx = 0",
            r"^merkle tile 0/0: does not match the entries it covers",
            id="tile-truncated",
        ),
        pytest.param(
            "DELETE FROM merkle_tiles WHERE level = 0 AND idx = 2",
            r"^merkle node 0/\d+: is missing",
            id="tile-deleted",
        ),
        pytest.param(
            "INSERT INTO merkle_tiles (level, idx, hashes) VALUES (0, 40, :forged_tile)",
            r"^merkle tile 0/40: is extra",
            id="tile-added",
        ),
        pytest.param(
            "INSERT INTO merkle_tiles (level, idx, hashes) VALUES (1, 0, :forged_tile)",
            r"^merkle tile 1/0: is extra",
            id="tile-added-above",
        ),
    ],
)
def test_tampered_merkle_tiles_are_named(tiled: Engine, sql: str, message: str) -> None:
    tamper(tiled, sql, {"forged_tile": b"\x42" * merkle.TILE_HASHES * 32, "short": b"\x42" * 31})

    with pytest.raises(VerificationError, match=message):
        verify_ledger(tiled)
