"""ConsentLedger, on SQLite and PostgreSQL: writes, receipts, erasure, as_of, policy and keys."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import MetaData, select

from ledger.consent.decisions import DECISIONS, DecisionRequest
from ledger.consent.eligibility import Eligibility
from ledger.consent.policy import Policy, default_policy
from ledger.consent.projection import Projector
from ledger.consent.subjects import commitment
from ledger.errors import Conflict, InvalidInput, NotFound, VerificationError
from ledger.service import CheckRequest, ConsentLedger
from ledger.service.keys import SigningKey
from ledger.settings import Settings
from ledger.store.db import read_session
from ledger.store.schema import ConsentDecision, PolicyVersion, SubjectMapping, SubjectVersion
from ledger.tlog import log
from ledger.tlog.evidence import EvidenceBundle, verify_bundle
from ledger.tlog.log import LogEntry, SealedAppend
from ledger.tlog.notes import Note, VerifierKey, verify_note
from ledger.verify import verify_ledger
from tests.conftest import TEST_ORIGIN

ACTOR = "ops"
ALICE = "alice-7f3a91@example.com"
BOB = "bob-1c22e0@example.com"
PROJECTION_TABLES = {
    "subject_versions": SubjectVersion,
    "consent_decisions": ConsentDecision,
    "policy_versions": PolicyVersion,
}


def all_entries(ledger: ConsentLedger) -> list[LogEntry]:
    with read_session(ledger.engine) as session:
        return log.read_entries(session, 0, log.tree_size(session))


def ref_of(ledger: ConsentLedger, subject_id: str) -> str:
    with read_session(ledger.engine) as session:
        mapping = session.get(SubjectMapping, subject_id)
        assert mapping is not None
        return mapping.ref


def trusted(ledger: ConsentLedger) -> list[VerifierKey]:
    return [VerifierKey.parse(ledger.verifier_key())]


def grant(category: str = "content.public", **fields: Any) -> DecisionRequest:
    return DecisionRequest(category=category, decision="granted", **fields)


def deny(category: str = "content.public", **fields: Any) -> DecisionRequest:
    return DecisionRequest(category=category, decision="denied", **fields)


def policy_version(version: int, *, us_public: str = "deny") -> Policy:
    """The default policy as `version`, with the US opt-out default for public posts changed."""
    document = default_policy().to_document()
    document["version"] = version
    document["defaults"]["default"]["ai-training"]["content.public"] = us_public
    return Policy.from_document(document)


def answer(result: Any) -> tuple[bool, str, int | None]:
    return (result.eligible, result.reason, result.decided_by)


def rows_containing(engine: Any, needle: str) -> list[tuple[str, str]]:
    """(table, column) of every stored value, in any table, that contains `needle`."""
    metadata = MetaData()
    metadata.reflect(engine)
    raw = needle.encode("utf-8")
    hits = []
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            for row in connection.execute(select(table)).mappings():
                for column, value in row.items():
                    if isinstance(value, memoryview):
                        value = value.tobytes()
                    if (isinstance(value, str) and needle in value) or (
                        isinstance(value, bytes) and raw in value
                    ):
                        hits.append((table.name, column))
    return hits


# --- register and update ------------------------------------------------------------------


def test_registering_appends_a_commitment_and_never_the_subject_id(ledger: ConsentLedger) -> None:
    size = ledger.tree_size()

    sealed = ledger.register_subject(ALICE, jurisdiction="us", minor=False, actor=ACTOR)

    assert sealed is not None
    (entry,) = sealed.entries
    assert (entry.seq, entry.kind, sealed.tree_size) == (size, "subject.registered", size + 1)
    assert set(entry.data) == {"subject", "commitment", "jurisdiction", "minor"}
    assert (entry.data["jurisdiction"], entry.data["minor"]) == ("US", False)
    with read_session(ledger.engine) as session:
        mapping = session.get(SubjectMapping, ALICE)
    assert mapping is not None
    assert entry.data["subject"] == mapping.ref != ALICE
    assert entry.data["commitment"] == commitment(mapping.salt, ALICE)
    assert ALICE.encode() not in entry.canonical


@pytest.mark.parametrize(
    ("jurisdiction", "minor", "changed"),
    [
        pytest.param("DE", False, {"jurisdiction": "DE"}, id="jurisdiction"),
        pytest.param("US", True, {"minor": True}, id="minor"),
        pytest.param(None, True, {"jurisdiction": None, "minor": True}, id="both"),
    ],
)
def test_update_appends_only_the_changed_fields(
    ledger: ConsentLedger, jurisdiction: str | None, minor: bool, changed: dict[str, Any]
) -> None:
    ledger.register_subject(ALICE, jurisdiction="US", actor=ACTOR)

    sealed = ledger.register_subject(ALICE, jurisdiction=jurisdiction, minor=minor, actor=ACTOR)

    assert sealed is not None
    (entry,) = sealed.entries
    assert entry.kind == "subject.updated"
    assert entry.data == {"subject": ref_of(ledger, ALICE), **changed}
    view = ledger.subject_view(ALICE)
    assert (view.jurisdiction, view.minor) == (jurisdiction, minor)


@pytest.mark.parametrize("jurisdiction", ["US", "us", " us "])
def test_registering_an_unchanged_subject_appends_nothing(
    ledger: ConsentLedger, jurisdiction: str
) -> None:
    ledger.register_subject(ALICE, jurisdiction="US", minor=True, actor=ACTOR)
    size = ledger.tree_size()

    assert (
        ledger.register_subject(ALICE, jurisdiction=jurisdiction, minor=True, actor=ACTOR) is None
    )
    assert ledger.tree_size() == size


# --- invalid input -------------------------------------------------------------------------

Call = Callable[[ConsentLedger], object]

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


@pytest.mark.parametrize("bad", [0, 1, 2])
def test_record_consents_is_all_or_nothing(ledger: ConsentLedger, bad: int) -> None:
    ledger.register_subject(ALICE, jurisdiction="US", actor=ACTOR)
    size = ledger.tree_size()
    decisions = [grant("profile"), deny("activity"), grant("location")]
    decisions[bad] = dataclasses.replace(decisions[bad], decision="perhaps")

    with pytest.raises(InvalidInput) as excinfo:
        ledger.record_consents(ALICE, decisions, actor=ACTOR)

    assert excinfo.value.field == f"decisions[{bad}].decision"
    assert ledger.tree_size() == size
    assert ledger.subject_view(ALICE).decisions == []


def test_record_consents_appends_one_entry_per_decision_in_one_checkpoint(
    ledger: ConsentLedger,
) -> None:
    ledger.register_subject(ALICE, jurisdiction="US", actor=ACTOR)
    size = ledger.tree_size()

    sealed = ledger.record_consents(
        ALICE,
        [grant("profile"), deny("activity", purpose="ai-training.generative"), grant("*")],
        actor=ACTOR,
    )

    assert [entry.seq for entry in sealed.entries] == [size, size + 1, size + 2]
    assert sealed.tree_size == size + 3 == ledger.tree_size()
    assert sealed.checkpoint == ledger.checkpoint()
    assert [
        (e.data["category"], e.data["purpose"], e.data["decision"]) for e in sealed.entries
    ] == [
        ("profile", "ai-training", "granted"),
        ("activity", "ai-training.generative", "denied"),
        ("*", "ai-training", "granted"),
    ]
    assert {entry.data["subject"] for entry in sealed.entries} == {ref_of(ledger, ALICE)}


# --- receipts and histories ---------------------------------------------------------------


def flip(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1 :]


def test_receipt_verifies_under_the_ledger_key(ledger: ConsentLedger) -> None:
    ledger.register_subject(ALICE, jurisdiction="US", actor=ACTOR)
    sealed = ledger.record_consents(ALICE, [grant(), deny("profile")], actor=ACTOR)

    bundle = ledger.receipt(sealed)

    assert bundle.verifier_key == ledger.verifier_key()
    assert bundle.checkpoint == sealed.checkpoint
    assert [item.index for item in bundle.entries] == [entry.seq for entry in sealed.entries]
    checkpoint = verify_bundle(bundle, trusted(ledger))
    assert (checkpoint.origin, checkpoint.size) == (TEST_ORIGIN, sealed.tree_size)
    # What an API client receives, parsed back, verifies just the same.
    verify_bundle(EvidenceBundle.from_json(bundle.to_json()), trusted(ledger))


def test_receipt_does_not_verify_under_another_key(ledger: ConsentLedger) -> None:
    ledger.register_subject(ALICE, actor=ACTOR)
    sealed = ledger.record_consents(ALICE, [grant()], actor=ACTOR)
    stranger = SigningKey.generate(TEST_ORIGIN).verifier_key

    with pytest.raises(VerificationError, match="no signature by a known key"):
        verify_bundle(ledger.receipt(sealed), [stranger])


@pytest.mark.parametrize(
    ("locate", "message"),
    [
        pytest.param(
            lambda canonical: canonical.index(b'"granted"') + 1,
            r"entry \d+: inclusion proof fails",
            id="value-byte",
        ),
        pytest.param(lambda canonical: 0, r"entry \d+: ", id="structure-byte"),
    ],
)
def test_receipt_with_a_flipped_canonical_byte_does_not_verify(
    ledger: ConsentLedger, locate: Callable[[bytes], int], message: str
) -> None:
    ledger.register_subject(ALICE, actor=ACTOR)
    bundle = ledger.receipt(ledger.record_consents(ALICE, [grant()], actor=ACTOR))
    (item,) = bundle.entries
    forged = dataclasses.replace(
        bundle,
        entries=(
            dataclasses.replace(item, canonical=flip(item.canonical, locate(item.canonical))),
        ),
    )

    with pytest.raises(VerificationError, match=message):
        verify_bundle(forged, trusted(ledger))


def test_subject_history_holds_exactly_the_subjects_entries(ledger: ConsentLedger) -> None:
    ledger.register_subject(ALICE, jurisdiction="US", actor=ACTOR)
    ledger.register_subject(BOB, jurisdiction="DE", actor=ACTOR)
    ledger.record_consents(ALICE, [grant(), deny("profile")], actor=ACTOR)
    ledger.record_consents(BOB, [grant()], actor=ACTOR)
    ledger.register_subject(ALICE, jurisdiction="FR", actor=ACTOR)
    ledger.publish_policy(policy_version(2), actor=ACTOR)

    bundle = ledger.subject_history(ALICE)

    ref = ref_of(ledger, ALICE)
    expected = [entry.seq for entry in all_entries(ledger) if entry.data.get("subject") == ref]
    assert [item.index for item in bundle.entries] == expected
    assert [item.entry["kind"] for item in bundle.entries] == [
        "subject.registered",
        "consent.recorded",
        "consent.recorded",
        "subject.updated",
    ]
    checkpoint = verify_bundle(bundle, trusted(ledger))
    assert checkpoint.size == ledger.tree_size()


def test_the_log_never_holds_the_raw_subject_id(ledger: ConsentLedger) -> None:
    ledger.register_subject(ALICE, jurisdiction="US", actor=ACTOR)
    ledger.record_consents(ALICE, [grant(), deny("biometric", explicit=True)], actor=ACTOR)
    ledger.register_subject(ALICE, jurisdiction="GB", minor=True, actor=ACTOR)
    ledger.erase_subject(ALICE, actor=ACTOR)

    raw = ALICE.encode("utf-8")
    assert all(raw not in entry.canonical for entry in all_entries(ledger))
    assert raw.decode() not in ledger.checkpoint()


# --- erasure -------------------------------------------------------------------------------


def test_erasure_leaves_no_row_anywhere_containing_the_subject_id(ledger: ConsentLedger) -> None:
    ledger.register_subject(ALICE, jurisdiction="DE", actor=ACTOR)
    ledger.record_consents(ALICE, [grant(notice="v1"), deny("profile")], actor=ACTOR)
    ledger.register_subject(BOB, actor=ACTOR)
    # The scan does find the id while the subject exists.
    assert rows_containing(ledger.engine, ALICE) == [("subjects", "subject_id")]

    sealed = ledger.erase_subject(ALICE, actor=ACTOR)

    assert [entry.kind for entry in sealed.entries] == ["subject.erased"]
    assert rows_containing(ledger.engine, ALICE) == []
    assert rows_containing(ledger.engine, BOB) == [("subjects", "subject_id")]


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


def test_ledger_verifies_after_erasure(ledger: ConsentLedger) -> None:
    ledger.register_subject(ALICE, jurisdiction="DE", actor=ACTOR)
    ledger.register_subject(BOB, jurisdiction="US", actor=ACTOR)
    ledger.record_consents(ALICE, [grant()], actor=ACTOR)
    ledger.erase_subject(ALICE, actor=ACTOR)

    report = verify_ledger(ledger.engine)

    assert (report.entries, report.subjects) == (ledger.tree_size(), 1)


# --- as_of and at -------------------------------------------------------------------------


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


# --- policy -------------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    ("published", "attempt"),
    [
        pytest.param([], 1, id="same-as-initial"),
        pytest.param([2], 2, id="same-as-latest"),
        pytest.param([3], 2, id="older-than-latest"),
    ],
)
def test_publishing_a_policy_that_is_not_newer_is_a_conflict(
    ledger: ConsentLedger, published: list[int], attempt: int
) -> None:
    for version in published:
        ledger.publish_policy(policy_version(version), actor=ACTOR)
    size = ledger.tree_size()

    with pytest.raises(Conflict, match=f"policy version {attempt} is not newer"):
        ledger.publish_policy(policy_version(attempt), actor=ACTOR)

    assert ledger.tree_size() == size


def test_a_policy_name_too_long_for_the_schema_behaves_the_same_on_both_engines(
    ledger: ConsentLedger,
) -> None:
    long_name = "c" * 150
    document = default_policy().to_document()
    document["version"] = 2
    document["categories"][long_name] = {"description": "long", "maps_to": {}}
    ledger.register_subject(ALICE, jurisdiction="US", actor=ACTOR)
    size = ledger.tree_size()

    # Either the policy is refused up front, or the category it defines works.
    try:
        ledger.publish_policy(Policy.from_document(document), actor=ACTOR)
    except InvalidInput:
        assert ledger.tree_size() == size
        return
    ledger.record_consents(ALICE, [grant(long_name)], actor=ACTOR)
    assert answer(ledger.check(ALICE, long_name))[:2] == (True, "consent")


# --- keys ---------------------------------------------------------------------------------


def signers_of(note: str) -> int:
    return len(Note.parse(note).signatures)


def test_key_rotation_checkpoint_is_signed_by_old_and_new_key(ledger: ConsentLedger) -> None:
    old = ledger.verifier_key()

    rotation = ledger.rotate_key(actor=ACTOR)

    new = ledger.verifier_key()
    assert new != old
    assert [(e.kind, e.data["verifier_key"]) for e in rotation.entries] == [
        ("key.added", new),
        ("key.retired", old),
    ]
    assert signers_of(rotation.checkpoint) == 2
    verify_note(rotation.checkpoint, [VerifierKey.parse(old)])
    verify_note(rotation.checkpoint, [VerifierKey.parse(new)])

    ledger.register_subject(ALICE, actor=ACTOR)
    later = ledger.record_consents(ALICE, [grant()], actor=ACTOR)

    assert signers_of(later.checkpoint) == 1
    verify_note(later.checkpoint, [VerifierKey.parse(new)])
    with pytest.raises(VerificationError, match="no signature by a known key"):
        verify_note(later.checkpoint, [VerifierKey.parse(old)])
    verify_ledger(ledger.engine, trusted_key=VerifierKey.parse(old))


def test_receipt_after_rotation_verifies_under_the_new_key_only(ledger: ConsentLedger) -> None:
    old = trusted(ledger)
    ledger.register_subject(ALICE, actor=ACTOR)
    earlier = ledger.record_consents(ALICE, [grant()], actor=ACTOR)
    ledger.rotate_key(actor=ACTOR)

    receipt = ledger.receipt(ledger.record_consents(ALICE, [deny()], actor=ACTOR))

    assert receipt.verifier_key == ledger.verifier_key()
    verify_bundle(receipt, trusted(ledger))
    with pytest.raises(VerificationError, match="no signature by a known key"):
        verify_bundle(receipt, old)
    # Receipts issued before the rotation still prove what they proved.
    verify_bundle(ledger.receipt(earlier), old)


def test_rotations_chain_and_survive_reopening_the_ledger(ledger: ConsentLedger) -> None:
    ledger.rotate_key(actor=ACTOR)
    ledger.register_subject(ALICE, actor=ACTOR)
    ledger.rotate_key(actor=ACTOR)
    reopened = ConsentLedger(ledger.settings)
    try:
        sealed = reopened.record_consents(ALICE, [grant()], actor=ACTOR)
        verify_note(sealed.checkpoint, trusted(reopened))
        report = verify_ledger(reopened.engine)
    finally:
        reopened.close()
    assert report.entries == sealed.tree_size


def test_writes_after_another_instance_rotated_the_key_are_signed_by_the_new_key(
    ledger: ConsentLedger,
) -> None:
    ledger.register_subject(ALICE, actor=ACTOR)  # this instance now holds the key
    other = ConsentLedger(ledger.settings)
    try:
        other.rotate_key(actor=ACTOR)
    finally:
        other.close()

    sealed = ledger.register_subject(BOB, actor=ACTOR)

    assert sealed is not None
    verify_note(sealed.checkpoint, trusted(ledger))
    verify_ledger(ledger.engine)


# --- check_many ---------------------------------------------------------------------------


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


# --- property: replay equals projection ---------------------------------------------------

POLICY = default_policy()
POOL = ("s-1", "s-2", "s-3")
decision_requests = st.builds(
    DecisionRequest,
    category=st.sampled_from((*POLICY.categories, "*")),
    decision=st.sampled_from(DECISIONS),
    purpose=st.sampled_from((*POLICY.purposes, "*")),
    explicit=st.booleans(),
    method=st.sampled_from(("api", "import")),
    notice=st.sampled_from((None, "notice-v1")),
    effective=st.sampled_from((None, "2020-01-01T00:00:00Z", "2035-06-01T12:00:00+02:00")),
    expires=st.sampled_from((None, "2099-01-01T00:00:00Z")),
)
operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("register"),
            st.sampled_from(POOL),
            st.sampled_from((None, "US", "de", "GB", "BR")),
            st.booleans(),
        ),
        st.tuples(
            st.just("record"),
            st.sampled_from(POOL),
            st.lists(decision_requests, min_size=1, max_size=3),
        ),
        st.tuples(st.just("erase"), st.sampled_from(POOL)),
        st.tuples(st.just("publish"), st.sampled_from(("allow", "deny"))),
        st.tuples(st.just("rotate")),
    ),
    min_size=1,
    max_size=12,
)


def stored_projection(ledger: ConsentLedger) -> dict[str, list[dict[str, Any]]]:
    with ledger.engine.connect() as connection:
        return {
            name: [
                dict(row)
                for row in connection.execute(
                    select(model.__table__).order_by(model.__table__.c.seq)
                ).mappings()
            ]
            for name, model in PROJECTION_TABLES.items()
        }


def replayed_projection(ledger: ConsentLedger) -> dict[str, list[dict[str, Any]]]:
    replayed = {
        table: [dict(zip(columns, row, strict=True)) for row in rows]
        for table, columns, rows in Projector().project(all_entries(ledger))
    }
    return {name: sorted(replayed[name], key=lambda row: row["seq"]) for name in PROJECTION_TABLES}


def apply(
    ledger: ConsentLedger,
    operation: tuple[Any, ...],
    registered: dict[str, tuple[str | None, bool]],
    erased: set[str],
    versions: list[int],
) -> SealedAppend | None:
    """Apply one operation, asserting the outcome a model of the ledger predicts."""
    kind = operation[0]
    if kind == "publish":
        versions.append(versions[-1] + 1)
        return ledger.publish_policy(
            policy_version(versions[-1], us_public=operation[1]), actor=ACTOR
        )
    if kind == "rotate":
        return ledger.rotate_key(actor=ACTOR)
    subject_id = operation[1]
    if subject_id in erased:
        with pytest.raises(Conflict):
            _subject_operation(ledger, operation)
        return None
    if kind != "register" and subject_id not in registered:
        with pytest.raises(NotFound):
            _subject_operation(ledger, operation)
        return None
    sealed = _subject_operation(ledger, operation)
    if kind == "register":
        attributes = (operation[2].upper() if operation[2] else None, operation[3])
        assert (sealed is None) == (registered.get(subject_id) == attributes)
        registered[subject_id] = attributes
    elif kind == "erase":
        del registered[subject_id]
        erased.add(subject_id)
    return sealed


def _subject_operation(ledger: ConsentLedger, operation: tuple[Any, ...]) -> SealedAppend | None:
    kind, subject_id = operation[:2]
    if kind == "register":
        return ledger.register_subject(
            subject_id, jurisdiction=operation[2], minor=operation[3], actor=ACTOR
        )
    if kind == "record":
        return ledger.record_consents(subject_id, operation[2], actor=ACTOR)
    return ledger.erase_subject(subject_id, actor=ACTOR)


@hypothesis_settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ops=operations)
def test_replaying_the_log_gives_the_stored_projection(
    sqlite_template: Path, ops: list[tuple[Any, ...]]
) -> None:
    # SQLite only: each example needs a fresh ledger, and a file copy of the
    # migrated template is the cheap way to get one.
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "ledger.db"
        shutil.copyfile(sqlite_template, path)
        settings = Settings(home=Path(directory) / "home", database_url=f"sqlite:///{path}")
        ledger, _ = ConsentLedger.initialize(settings, origin=TEST_ORIGIN, actor=ACTOR)
        try:
            registered: dict[str, tuple[str | None, bool]] = {}
            erased: set[str] = set()
            versions = [1]
            for operation in ops:
                apply(ledger, operation, registered, erased, versions)

            assert stored_projection(ledger) == replayed_projection(ledger)
            report = verify_ledger(ledger.engine)
            assert (report.entries, report.subjects) == (ledger.tree_size(), len(registered))
            for subject_id in POOL:
                result = ledger.check(subject_id, "profile")
                if subject_id in erased:
                    assert result.reason == "erased"
                elif subject_id not in registered:
                    assert result.reason == "unknown-subject"
                else:
                    view = ledger.subject_view(subject_id)
                    assert (view.jurisdiction, view.minor) == registered[subject_id]
            assert ledger.current_policy().version == versions[-1]
        finally:
            ledger.close()
