"""The writes, on both engines: registrations, decisions, erasure, policies, projections."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import select

from ledger.consent.decisions import DECISIONS, DecisionRequest
from ledger.consent.policy import Policy, default_policy
from ledger.consent.projection import Projector
from ledger.consent.subjects import commitment
from ledger.errors import Conflict, InvalidInput, NotFound
from ledger.service import ConsentLedger
from ledger.settings import Settings
from ledger.store.db import read_session
from ledger.store.schema import ConsentDecision, PolicyVersion, SubjectMapping, SubjectVersion
from ledger.tlog.log import SealedAppend
from ledger.verify import verify_ledger
from tests.conftest import TEST_ORIGIN
from tests.service.helpers import (
    ACTOR,
    ALICE,
    BOB,
    all_entries,
    answer,
    deny,
    grant,
    policy_version,
    ref_of,
    rows_containing,
)

PROJECTION_TABLES = {
    "subject_versions": SubjectVersion,
    "consent_decisions": ConsentDecision,
    "policy_versions": PolicyVersion,
}


# --- register and update -------------------------------------------------------------------


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


# --- decisions -----------------------------------------------------------------------------


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


# --- erasure -------------------------------------------------------------------------------


def test_the_log_never_holds_the_raw_subject_id(ledger: ConsentLedger) -> None:
    ledger.register_subject(ALICE, jurisdiction="US", actor=ACTOR)
    ledger.record_consents(ALICE, [grant(), deny("biometric", explicit=True)], actor=ACTOR)
    ledger.register_subject(ALICE, jurisdiction="GB", minor=True, actor=ACTOR)
    ledger.erase_subject(ALICE, actor=ACTOR)

    raw = ALICE.encode("utf-8")
    assert all(raw not in entry.canonical for entry in all_entries(ledger))
    assert raw.decode() not in ledger.checkpoint()


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


def test_ledger_verifies_after_erasure(ledger: ConsentLedger) -> None:
    ledger.register_subject(ALICE, jurisdiction="DE", actor=ACTOR)
    ledger.register_subject(BOB, jurisdiction="US", actor=ACTOR)
    ledger.record_consents(ALICE, [grant()], actor=ACTOR)
    ledger.erase_subject(ALICE, actor=ACTOR)

    report = verify_ledger(ledger.engine)

    assert (report.entries, report.subjects) == (ledger.tree_size(), 1)


# --- policy --------------------------------------------------------------------------------


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


# --- property: replay equals projection ----------------------------------------------------


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
