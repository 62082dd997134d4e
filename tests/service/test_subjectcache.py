"""The subject cache stays exact while other processes write (two instances, one database)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ledger.consent.decisions import DecisionRequest
from ledger.service import CheckRequest, ConsentLedger
from ledger.service.subjectcache import SUBJECT_COST, SubjectCache, _load
from ledger.settings import Settings
from ledger.store.db import read_session

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
    assert "dave" not in ledger._checker.subjects._by_id  # no process memory keeps the link


def _population(ledger: ConsentLedger, count: int) -> list[str]:
    ids = [f"user-{number}" for number in range(count)]
    for number, subject_id in enumerate(ids):
        ledger.register_subject(subject_id, jurisdiction="US" if number % 2 else "DE", actor=ACTOR)
        if number % 3 == 0:
            ledger.record_consents(
                subject_id,
                [DecisionRequest(category="content.public", decision="granted")],
                actor=ACTOR,
            )
        if number % 5 == 0:
            ledger.record_consents(
                subject_id, [DecisionRequest(category="*", decision="denied")], actor=ACTOR
            )
    return ids


def test_a_full_cache_evicts_subjects_and_stays_within_its_budget(
    ledger: ConsentLedger, settings: Settings
) -> None:
    ids = _population(ledger, 40)
    budget = 8 * SUBJECT_COST
    small = ConsentLedger(settings.model_copy(update={"subject_cache_mb": 0}))
    small._checker.subjects = SubjectCache(max_bytes=budget)
    try:
        for subject_id in ids:
            small.check(subject_id, "content.public")
            assert small._checker.subjects.estimated_bytes <= budget
        cache = small._checker.subjects
        assert 0 < len(cache) < len(ids)
        assert all(cache._slots[subject.slot] == sid for sid, subject in cache._by_id.items())
        assert len(cache._slots) == len(cache._by_id) == len(cache._id_of_ref)
        # Whatever was evicted, every answer is still the one a full cache gives.
        at = ledger.check(ids[0], "profile").at
        for subject_id in ids:
            expected = ledger.check(subject_id, "profile", at=at)
            assert small.check(subject_id, "profile", at=at) == expected
    finally:
        small.close()


def test_answers_do_not_depend_on_the_cache_budget(
    ledger: ConsentLedger, settings: Settings
) -> None:
    ids = _population(ledger, 30)
    uncached = ConsentLedger(settings.model_copy(update={"subject_cache_mb": 0}))
    try:
        requests = [
            CheckRequest(subject_id, category)
            for subject_id in [*ids, "nobody", *reversed(ids)]
            for category in ("content.public", "profile")
        ]
        expected = ledger.check_many(requests)
        for _ in range(2):  # the second pass answers from the warm cache
            again = ledger.check_many(requests, as_of=expected.checked_at, at=expected.at)
            assert again.results == expected.results
        cold = uncached.check_many(requests, as_of=expected.checked_at, at=expected.at)
        assert cold.results == expected.results
        assert len(uncached._checker.subjects) == 0
    finally:
        uncached.close()


def test_subjects_loaded_by_two_threads_at_once_are_cached_once(
    ledger: ConsentLedger, settings: Settings
) -> None:
    """Two batches that miss the same subjects both load them, then both remember them."""
    ids = _population(ledger, 12)
    cache = SubjectCache(max_bytes=100 * SUBJECT_COST)
    size = ledger.tree_size()
    with read_session(ledger.engine) as session:
        first, second = (_load(session, ids, size) for _ in range(2))
    for loaded in (first, second, first):
        cache._remember(loaded)
        assert all(cache._slots[subject.slot] == sid for sid, subject in cache._by_id.items())
        assert len(cache._slots) == len(cache._by_id) == len(cache._id_of_ref)
        assert cache.estimated_bytes == sum(s.cost for s in cache._by_id.values())
    assert len(cache) == len(ids)
    # Making room evicts by slot: every slot must still name a cached subject.
    cache._max_bytes = 6 * SUBJECT_COST
    cache._remember({"newcomer": next(iter(second.values()))})
    assert cache.estimated_bytes <= 6 * SUBJECT_COST
