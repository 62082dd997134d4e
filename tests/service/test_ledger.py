"""What every operation of `ConsentLedger` shares: bad input is named, unknown and erased
subjects are refused, and a refused call appends nothing.
"""

from __future__ import annotations

import pytest

from ledger.consent.decisions import DecisionRequest
from ledger.errors import Conflict, InvalidInput, NotFound
from ledger.service import ConsentLedger
from tests.service.helpers import ACTOR, ALICE, BOB, Call, grant

# --- invalid input -------------------------------------------------------------------------


INVALID_CALLS = [
    pytest.param(lambda led: led.register_subject("", actor=ACTOR), "subject_id", id="empty-id"),
    pytest.param(
        lambda led: led.register_subject("x" * 257, actor=ACTOR), "subject_id", id="long-id"
    ),
    pytest.param(
        lambda led: led.register_subject("a\x00b", actor=ACTOR), "subject_id", id="control-id"
    ),
    pytest.param(lambda led: led.register_subject(42, actor=ACTOR), "subject_id", id="int-id"),
    pytest.param(
        lambda led: led.register_subject(BOB, jurisdiction="XX", actor=ACTOR),
        "jurisdiction",
        id="unknown-country",
    ),
    pytest.param(
        lambda led: led.register_subject(BOB, jurisdiction="USA", actor=ACTOR),
        "jurisdiction",
        id="alpha-3-country",
    ),
    pytest.param(
        lambda led: led.register_subject(BOB, jurisdiction=1, actor=ACTOR),
        "jurisdiction",
        id="int-country",
    ),
    pytest.param(
        lambda led: led.register_subject(BOB, minor="yes", actor=ACTOR), "minor", id="minor-str"
    ),
    pytest.param(
        lambda led: led.record_consents("", [grant()], actor=ACTOR), "subject_id", id="record-id"
    ),
    pytest.param(
        lambda led: led.record_consents(ALICE, [], actor=ACTOR), "decisions", id="no-decisions"
    ),
    pytest.param(
        lambda led: led.record_consents(
            ALICE, [DecisionRequest("content.public", "maybe")], actor=ACTOR
        ),
        "decisions[0].decision",
        id="decision",
    ),
    pytest.param(
        lambda led: led.record_consents(ALICE, [grant("dms")], actor=ACTOR),
        "decisions[0].category",
        id="category",
    ),
    pytest.param(
        lambda led: led.record_consents(ALICE, [grant(purpose="ads")], actor=ACTOR),
        "decisions[0].purpose",
        id="purpose",
    ),
    pytest.param(
        lambda led: led.record_consents(ALICE, [grant(explicit="yes")], actor=ACTOR),
        "decisions[0].explicit",
        id="explicit",
    ),
    pytest.param(
        lambda led: led.record_consents(ALICE, [grant(method="has space")], actor=ACTOR),
        "decisions[0].method",
        id="method",
    ),
    pytest.param(
        lambda led: led.record_consents(ALICE, [grant(effective="yesterday")], actor=ACTOR),
        "decisions[0].effective",
        id="effective",
    ),
    pytest.param(
        lambda led: led.record_consents(
            ALICE,
            [grant(effective="2026-01-02T00:00:00Z", expires="2026-01-01T00:00:00Z")],
            actor=ACTOR,
        ),
        "decisions[0].expires",
        id="expires-before-effective",
    ),
    pytest.param(lambda led: led.erase_subject("", actor=ACTOR), "subject_id", id="erase-id"),
    pytest.param(lambda led: led.check(ALICE, "dms"), "category", id="check-category"),
    pytest.param(lambda led: led.check(ALICE, "*"), "category", id="check-wildcard"),
    pytest.param(lambda led: led.check(ALICE, "profile", "ads"), "purpose", id="check-purpose"),
    pytest.param(lambda led: led.check("", "profile"), "subject_id", id="check-id"),
    pytest.param(lambda led: led.check(ALICE, "profile", as_of=0), "as_of", id="as-of-zero"),
    pytest.param(
        lambda led: led.check(ALICE, "profile", as_of=led.tree_size() + 1),
        "as_of",
        id="as-of-future",
    ),
    pytest.param(lambda led: led.check(ALICE, "profile", as_of=True), "as_of", id="as-of-bool"),
    pytest.param(lambda led: led.check(ALICE, "profile", at="noon"), "at", id="at"),
]


@pytest.mark.parametrize(("call", "field"), INVALID_CALLS)
def test_invalid_input_names_the_field_and_appends_nothing(
    ledger: ConsentLedger, call: Call, field: str
) -> None:
    ledger.register_subject(ALICE, jurisdiction="US", actor=ACTOR)
    size = ledger.tree_size()

    with pytest.raises(InvalidInput) as excinfo:
        call(ledger)

    assert excinfo.value.field == field
    assert str(excinfo.value).startswith(f"{field}: ")
    assert ledger.tree_size() == size


# --- unknown and erased subjects -----------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda led: led.record_consents(BOB, [grant()], actor=ACTOR), id="record"),
        pytest.param(lambda led: led.erase_subject(BOB, actor=ACTOR), id="erase"),
        pytest.param(lambda led: led.subject_history(BOB), id="history"),
        pytest.param(lambda led: led.subject_view(BOB), id="view"),
    ],
)
def test_unregistered_subject_is_not_found(ledger: ConsentLedger, call: Call) -> None:
    size = ledger.tree_size()

    with pytest.raises(NotFound, match="is not registered"):
        call(ledger)

    assert ledger.tree_size() == size


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda led: led.register_subject(ALICE, actor=ACTOR), id="re-register"),
        pytest.param(
            lambda led: led.register_subject(ALICE, jurisdiction="US", minor=True, actor=ACTOR),
            id="re-register-other-attributes",
        ),
        pytest.param(lambda led: led.record_consents(ALICE, [grant()], actor=ACTOR), id="record"),
        pytest.param(lambda led: led.erase_subject(ALICE, actor=ACTOR), id="erase-again"),
        pytest.param(lambda led: led.subject_history(ALICE), id="history"),
    ],
)
def test_an_erased_subject_id_is_refused_as_a_conflict(ledger: ConsentLedger, call: Call) -> None:
    ledger.register_subject(ALICE, actor=ACTOR)
    ledger.erase_subject(ALICE, actor=ACTOR)
    size = ledger.tree_size()

    with pytest.raises(Conflict, match="was erased"):
        call(ledger)

    assert ledger.tree_size() == size
