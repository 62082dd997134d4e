"""The subject cache stays exact while other processes write (two instances, one database)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ledger.consents import DecisionRequest
from ledger.service import ConsentLedger
from ledger.settings import Settings

ACTOR = "test"


@pytest.fixture
def other(ledger: ConsentLedger, settings: Settings) -> Iterator[ConsentLedger]:
    """A second instance on the same database, as another API worker would be."""
    instance = ConsentLedger(settings)
    yield instance
    instance.close()


def test_a_warm_cache_sees_decisions_written_by_another_instance(
    ledger: ConsentLedger, other: ConsentLedger
) -> None:
    ledger.register_subject("alice", jurisdiction="US", actor=ACTOR)
    before = ledger.check("alice", "content.public")
    assert (before.eligible, before.reason) == (True, "default-allow")

    sealed = other.record_consents(
        "alice", [DecisionRequest(category="*", decision="denied")], actor=ACTOR
    )

    after = ledger.check("alice", "content.public")
    assert (after.eligible, after.reason, after.decided_by) == (
        False,
        "refused",
        sealed.entries[0].seq,
    )
    # The cached history still answers questions about the past exactly.
    past = ledger.check("alice", "content.public", as_of=before.checked_at)
    assert (past.eligible, past.reason) == (True, "default-allow")


def test_a_warm_cache_sees_attribute_changes_and_new_subjects(
    ledger: ConsentLedger, other: ConsentLedger
) -> None:
    ledger.register_subject("bob", jurisdiction="US", actor=ACTOR)
    assert ledger.check("bob", "content.public").reason == "default-allow"
    assert ledger.check("carol", "content.public").reason == "unknown-subject"

    other.register_subject("bob", jurisdiction="US", minor=True, actor=ACTOR)
    other.register_subject("carol", jurisdiction="DE", actor=ACTOR)

    assert ledger.check("bob", "content.public").reason == "minor"
    assert ledger.check("carol", "content.public").reason == "default-deny"


def test_an_erasure_by_another_instance_evicts_the_subject(
    ledger: ConsentLedger, other: ConsentLedger
) -> None:
    ledger.register_subject("dave", jurisdiction="US", actor=ACTOR)
    assert ledger.check("dave", "content.public").eligible

    other.erase_subject("dave", actor=ACTOR)

    answer = ledger.check("dave", "content.public")
    assert (answer.eligible, answer.reason) == (False, "erased")
    assert "dave" not in ledger._subjects._by_id  # no process memory keeps the link
