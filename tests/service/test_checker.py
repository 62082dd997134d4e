"""Eligibility checks: erased subjects, `as_of` and `at`, policies in force, and `check_many`."""

from __future__ import annotations

import dataclasses

import pytest

from ledger.consent.eligibility import Eligibility
from ledger.errors import InvalidInput
from ledger.service import CheckRequest, ConsentLedger
from tests.service.helpers import ACTOR, ALICE, BOB, Call, answer, deny, grant, policy_version

# --- erased subjects -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "purpose"),
    [("content.public", None), ("profile", "ai-inference"), ("biometric.face", "data-mining")],
)
def test_every_check_for_an_erased_subject_answers_erased(
    ledger: ConsentLedger, category: str, purpose: str | None
) -> None:
    ledger.register_subject(ALICE, jurisdiction="US", actor=ACTOR)
    sealed = ledger.record_consents(ALICE, [grant("*", purpose="*", explicit=True)], actor=ACTOR)
    assert ledger.check(ALICE, category, purpose).eligible

    ledger.erase_subject(ALICE, actor=ACTOR)

    for as_of in (None, sealed.tree_size):
        result = ledger.check(ALICE, category, purpose, as_of=as_of)
        assert answer(result) == (False, "erased", None)
    (batched,) = ledger.check_many([CheckRequest(ALICE, category, purpose)]).results
    assert batched == Eligibility(False, "erased", None)


# --- as_of and at --------------------------------------------------------------------------


def test_check_as_of_ignores_decisions_recorded_at_or_after_that_size(
    ledger: ConsentLedger,
) -> None:
    ledger.register_subject(ALICE, jurisdiction="US", actor=ACTOR)
    before = ledger.tree_size()
    sealed = ledger.record_consents(ALICE, [deny()], actor=ACTOR)

    past = ledger.check(ALICE, "content.public", as_of=before)
    now = ledger.check(ALICE, "content.public")

    assert answer(past) == (True, "default-allow", None)
    assert past.checked_at == before
    assert answer(now) == (False, "refused", sealed.entries[0].seq)
    assert now.checked_at == sealed.tree_size


MORE_WRITES = [
    pytest.param(lambda led: led.record_consents(ALICE, [deny()], actor=ACTOR), id="decision"),
    pytest.param(
        lambda led: led.register_subject(ALICE, jurisdiction="DE", actor=ACTOR), id="moved"
    ),
    pytest.param(
        lambda led: led.register_subject(ALICE, jurisdiction="US", minor=True, actor=ACTOR),
        id="minor",
    ),
    pytest.param(lambda led: led.publish_policy(policy_version(2), actor=ACTOR), id="policy"),
    pytest.param(lambda led: led.rotate_key(actor=ACTOR), id="key-rotation"),
    pytest.param(lambda led: led.erase_subject(BOB, actor=ACTOR), id="other-erased"),
]


@pytest.mark.parametrize("write", MORE_WRITES)
def test_same_as_of_and_at_give_the_same_answer_after_more_writes(
    ledger: ConsentLedger, write: Call
) -> None:
    ledger.register_subject(ALICE, jurisdiction="US", actor=ACTOR)
    ledger.register_subject(BOB, jurisdiction="US", actor=ACTOR)
    ledger.record_consents(ALICE, [grant("activity")], actor=ACTOR)
    as_of, at = ledger.tree_size(), "2099-01-01T00:00:00Z"
    questions = [("content.public", None), ("activity", None), ("profile", "data-mining")]
    before = [ledger.check(ALICE, c, p, as_of=as_of, at=at) for c, p in questions]

    write(ledger)
    after = [ledger.check(ALICE, c, p, as_of=as_of, at=at) for c, p in questions]

    assert ledger.tree_size() > as_of
    assert after == before
    assert answer(before[0]) == (True, "default-allow", None)
    assert answer(before[1])[:2] == (True, "consent")


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        pytest.param("2029-12-31T23:59:59.999999Z", (True, "default-allow"), id="before-effective"),
        pytest.param("2030-01-01T00:00:00Z", (False, "refused"), id="at-effective"),
        pytest.param("2030-01-01T01:00:00+01:00", (False, "refused"), id="same-instant-offset"),
        pytest.param("2031-06-01T00:00:00Z", (False, "refused"), id="before-expiry"),
        pytest.param("2032-01-01T00:00:00Z", (True, "default-allow"), id="at-expiry"),
    ],
)
def test_check_at_a_time_considers_only_decisions_in_effect(
    ledger: ConsentLedger, at: str, expected: tuple[bool, str]
) -> None:
    ledger.register_subject(ALICE, jurisdiction="US", actor=ACTOR)
    ledger.record_consents(
        ALICE,
        [deny(effective="2030-01-01T00:00:00Z", expires="2032-01-01T00:00:00Z")],
        actor=ACTOR,
    )

    result = ledger.check(ALICE, "content.public", at=at)

    assert (result.eligible, result.reason) == expected
    assert result.at.endswith("Z")


# --- policy in force -----------------------------------------------------------------------


def test_a_published_policy_applies_from_the_tree_size_that_includes_it(
    ledger: ConsentLedger,
) -> None:
    ledger.register_subject(ALICE, jurisdiction="US", actor=ACTOR)
    before = ledger.tree_size()

    sealed = ledger.publish_policy(policy_version(2), actor=ACTOR)

    (entry,) = sealed.entries
    assert (entry.kind, entry.data["version"]) == ("policy.published", 2)
    assert entry.data["policy"] == policy_version(2).to_document()
    old = ledger.check(ALICE, "content.public", as_of=before)
    new = ledger.check(ALICE, "content.public", as_of=sealed.tree_size)
    latest = ledger.check(ALICE, "content.public")
    assert (answer(old), old.policy_version) == ((True, "default-allow", None), 1)
    assert (answer(new), new.policy_version) == ((False, "default-deny", None), 2)
    assert dataclasses.replace(latest, at=new.at) == new
    assert ledger.current_policy().version == 2
    # A policy that changes the answer back is just as effective.
    ledger.publish_policy(policy_version(3, us_public="allow"), actor=ACTOR)
    assert answer(ledger.check(ALICE, "content.public")) == (True, "default-allow", None)


# --- check_many ----------------------------------------------------------------------------


def test_check_many_answers_bad_items_with_their_own_error(ledger: ConsentLedger) -> None:
    ledger.register_subject(ALICE, jurisdiction="US", actor=ACTOR)
    ledger.record_consents(ALICE, [deny("activity")], actor=ACTOR)
    requests = [
        CheckRequest(ALICE, "content.public"),
        CheckRequest(ALICE, "no-such-category"),
        CheckRequest("", "content.public"),
        CheckRequest(ALICE, "content.public", "no-such-purpose"),
        CheckRequest("never-registered", "profile"),
        CheckRequest(ALICE, "content.private"),
        CheckRequest(ALICE, 7),
        CheckRequest(ALICE, "activity"),
    ]

    batch = ledger.check_many(requests)

    results = batch.results
    assert len(results) == len(requests)
    errors = {i: r.field for i, r in enumerate(results) if isinstance(r, InvalidInput)}
    assert errors == {1: "category", 2: "subject_id", 3: "purpose", 6: "category"}
    assert results[0] == Eligibility(True, "default-allow", None)
    assert results[4] == Eligibility(False, "unknown-subject", None)
    assert results[5] == Eligibility(False, "prohibited", None)
    assert results[7] == Eligibility(False, "refused", ledger.tree_size() - 1)
    assert (batch.checked_at, batch.policy_version) == (ledger.tree_size(), 1)
    assert batch.checkpoint == ledger.checkpoint()


def test_check_many_applies_the_batch_purpose_to_items_without_one(
    ledger: ConsentLedger,
) -> None:
    ledger.register_subject(ALICE, jurisdiction="US", actor=ACTOR)

    batch = ledger.check_many(
        [
            CheckRequest(ALICE, "content.public"),
            CheckRequest(ALICE, "content.public", "ai-training"),
        ],
        purpose="data-mining",
    )

    assert batch.results == [
        Eligibility(False, "default-deny", None),
        Eligibility(True, "default-allow", None),
    ]
