"""The change feed over HTTP (SPEC §8): `GET /v1/changes`, on SQLite and PostgreSQL.

Pages chain through `next`; every page's range proof, every filtered event's inclusion
proof, and every event's canonical bytes are checked against the signed checkpoint with
the verifier key alone; effects and obligations are those of SPEC §8; a long-poll
answers when another writer appends; bad input is a clear problem+json.
"""

from __future__ import annotations

import base64
import threading
import time
from datetime import timedelta
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient

from api.routes import changes as changes_route
from ledger.consent.decisions import DecisionRequest
from ledger.consent.policy import Policy
from ledger.service import ConsentLedger
from ledger.service.clients import revoke_client
from ledger.settings import Settings
from ledger.timestamps import format_timestamp, utc_now
from ledger.tlog import merkle
from ledger.tlog.canonical import parse_canonical
from ledger.tlog.notes import Checkpoint, VerifierKey, open_checkpoint
from tests.api.helpers import Keys, assert_problem, check, record, register
from tests.api.test_datasets import ndjson, post_build
from tests.conftest import TEST_ORIGIN

CHANGES = "/v1/changes"
# What an event says beside its entry's data.
EVENT_FIELDS = {
    "seq",
    "kind",
    "time",
    "canonical",
    "subject_id",
    "subject",
    "effect",
    "obligations",
}


def changes(client: TestClient, keys: Keys, **params: Any) -> dict[str, Any]:
    response = client.get(CHANGES, params=params, headers=keys.headers("feed"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    page: dict[str, Any] = response.json()
    return page


def verified_page(page: dict[str, Any], after: int, verifier: list[VerifierKey]) -> Checkpoint:
    """Check a page with the verifier key alone: its checkpoint, its range proof, its events'
    canonical bytes; the checkpoint it was proven against."""
    checkpoint = open_checkpoint(page["checkpoint"], verifier, origin=TEST_ORIGIN)
    assert checkpoint.size == page["tree_size"] >= page["next"] >= after
    events = page["events"]
    assert [event["seq"] for event in events] == list(range(after, page["next"]))
    for event in events:
        check_canonical(event)
    proof = [base64.b64decode(node) for node in page["proof"]]
    if not events:
        assert proof == []
        return checkpoint
    leaves = [merkle.leaf_hash(base64.b64decode(event["canonical"])) for event in events]
    merkle.verify_range(after, leaves, checkpoint.size, proof, checkpoint.root)
    return checkpoint


def check_canonical(event: dict[str, Any]) -> None:
    """The event's canonical bytes are its entry: seq, kind, time and every data field."""
    entry = parse_canonical(base64.b64decode(event["canonical"]))
    assert (entry["seq"], entry["kind"], entry["time"]) == (
        event["seq"],
        event["kind"],
        event["time"],
    )
    for name, value in entry["data"].items():
        assert event[name] == value, (name, event)
    extra = set(event) - EVENT_FIELDS - {"inclusion"} - set(entry["data"])
    assert not extra, f"fields neither the event's nor the entry's: {extra}"


def all_events(client: TestClient, keys: Keys, after: int = 0) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        page = changes(client, keys, after=after, limit=10_000)
        events += page["events"]
        if page["next"] == after:
            return events
        after = page["next"]


def effect_of(event: dict[str, Any]) -> set[tuple[str, str, bool, str]]:
    return {(e["category"], e["purpose"], e["eligible"], e["reason"]) for e in event["effect"]}


# US subjects are opt-out: these pairs are eligible by default (the shipped policy).
US_DEFAULT_ALLOW = {
    (category, purpose)
    for category in (
        "activity",
        "content.public",
        "profile",
        "profile.education",
        "profile.employment",
    )
    for purpose in ("ai-training", "ai-training.generative")
}


# --- pages ------------------------------------------------------------------------------------


def test_pages_chain_through_next_and_each_proves_its_events(
    client: TestClient, keys: Keys, verifier: list[VerifierKey]
) -> None:
    for number in range(5):
        register(client, keys, f"u{number}", jurisdiction="US")
        record(client, keys, f"u{number}", {"category": "content.public", "decision": "withdrawn"})
    size = changes(client, keys, after=0, limit=1)["tree_size"]

    seen: list[int] = []
    cursor = 0
    for limit in (1, 2, 3, 5, 1, 7, 4, 10_000):
        page = changes(client, keys, after=cursor, limit=limit)
        assert len(page["events"]) == min(limit, size - cursor)
        verified_page(page, cursor, verifier)
        seen += [event["seq"] for event in page["events"]]
        cursor = page["next"]
    assert seen == list(range(size))
    assert cursor == size

    # At the end of the log: an empty page, nothing to prove, the same cursor.
    end = changes(client, keys, after=size)
    assert (end["events"], end["next"], end["proof"]) == ([], size, [])
    verified_page(end, size, verifier)


def test_the_default_page_starts_at_zero(
    client: TestClient, keys: Keys, verifier: list[VerifierKey]
) -> None:
    register(client, keys, "u1", jurisdiction="US")
    page = changes(client, keys)
    assert page["events"][0]["seq"] == 0
    assert page["events"][0]["kind"] == "ledger.initialized"
    verified_page(page, 0, verifier)


def test_a_page_from_a_late_cursor_proves_into_a_larger_tree(
    client: TestClient, keys: Keys, verifier: list[VerifierKey]
) -> None:
    for number in range(12):
        register(client, keys, f"u{number}", jurisdiction="DE")
    size = changes(client, keys, after=0, limit=1)["tree_size"]
    for after, limit in ((3, 4), (5, 1), (8, 3), (size - 1, 5), (1, size)):
        page = changes(client, keys, after=after, limit=limit)
        verified_page(page, after, verifier)


def test_a_tampered_event_fails_the_pages_range_proof(
    client: TestClient, keys: Keys, verifier: list[VerifierKey]
) -> None:
    register(client, keys, "u1", jurisdiction="US")
    page = changes(client, keys, after=1, limit=2)
    checkpoint = verified_page(page, 1, verifier)
    leaves = [merkle.leaf_hash(base64.b64decode(event["canonical"])) for event in page["events"]]
    leaves[0] = merkle.leaf_hash(b"something else")
    proof = [base64.b64decode(node) for node in page["proof"]]
    with pytest.raises(Exception, match="root"):
        merkle.verify_range(1, leaves, checkpoint.size, proof, checkpoint.root)


# --- events: ids, refs, effects, obligations ---------------------------------------------------


def test_an_erased_subjects_events_keep_the_ref_but_lose_the_id(
    client: TestClient, keys: Keys, ledger: ConsentLedger
) -> None:
    registered = register(client, keys, "u1", jurisdiction="US")
    ref = registered["receipt"]["entries"][0]["entry"]["data"]["subject"]
    record(client, keys, "u1", {"category": "profile", "decision": "denied"})
    register(client, keys, "u2", jurisdiction="US")
    before = [event for event in all_events(client, keys) if event["subject"] == ref]
    assert [event["subject_id"] for event in before] == ["u1", "u1"]

    ledger.erase_subject("u1", actor="test")

    after = [event for event in all_events(client, keys) if event["subject"] == ref]
    assert [event["kind"] for event in after] == [
        "subject.registered",
        "consent.recorded",
        "subject.erased",
    ]
    assert [event["subject_id"] for event in after] == [None, None, None]
    others = [event for event in all_events(client, keys) if event["subject"] not in (None, ref)]
    assert {event["subject_id"] for event in others} == {"u2"}
    # Kinds that name no subject have neither.
    first = all_events(client, keys)[0]
    assert (first["subject"], first["subject_id"]) == (None, None)


def test_a_registration_turns_the_regime_defaults(client: TestClient, keys: Keys) -> None:
    register(client, keys, "us", jurisdiction="US")
    register(client, keys, "eu", jurisdiction="FR")
    register(client, keys, "kid", jurisdiction="US", minor=True)
    by_id = {event["subject_id"]: event for event in all_events(client, keys)[-3:]}
    assert effect_of(by_id["us"]) == {(c, p, True, "default-allow") for c, p in US_DEFAULT_ALLOW}
    assert by_id["eu"]["effect"] == []  # opt-in: nothing eligible without consent
    assert by_id["kid"]["effect"] == []  # minors never
    assert by_id["us"]["jurisdiction"] == "US"
    assert by_id["us"]["minor"] is False


def test_a_withdrawal_turns_the_pairs_it_covers(client: TestClient, keys: Keys) -> None:
    register(client, keys, "u1", jurisdiction="US")
    record(client, keys, "u1", {"category": "content", "purpose": "*", "decision": "withdrawn"})
    event = all_events(client, keys)[-1]
    assert event["kind"] == "consent.recorded"
    assert (event["category"], event["purpose"], event["decision"]) == (
        "content",
        "*",
        "withdrawn",
    )
    assert effect_of(event) == {
        ("content.public", "ai-training", False, "withdrawn"),
        ("content.public", "ai-training.generative", False, "withdrawn"),
    }
    # Withdrawing again changes no answer.
    record(client, keys, "u1", {"category": "content.public", "decision": "withdrawn"})
    assert all_events(client, keys)[-1]["effect"] == []


def test_a_grant_on_a_special_category_turns_only_when_explicit(
    client: TestClient, keys: Keys
) -> None:
    register(client, keys, "u1", jurisdiction="DE")
    record(client, keys, "u1", {"category": "biometric.face", "decision": "granted"})
    assert all_events(client, keys)[-1]["effect"] == []
    record(
        client,
        keys,
        "u1",
        {"category": "biometric.face", "decision": "granted", "explicit": True},
    )
    assert effect_of(all_events(client, keys)[-1]) == {
        ("biometric.face", "ai-training", True, "consent"),
        ("biometric.face", "ai-training.generative", True, "consent"),
    }


def test_an_erasure_turns_every_eligible_pair(client: TestClient, keys: Keys) -> None:
    register(client, keys, "u1", jurisdiction="US")
    record(client, keys, "u1", {"category": "location", "purpose": "*", "decision": "granted"})
    record(client, keys, "u1", {"category": "profile", "decision": "withdrawn"})
    response = client.delete("/v1/subjects/u1", headers=keys.headers("admin"))
    assert response.status_code in (200, 201), response.text
    event = all_events(client, keys)[-1]
    assert event["kind"] == "subject.erased"
    assert event["subject_id"] is None
    eligible_before = (
        US_DEFAULT_ALLOW
        - {("profile", purpose) for purpose in ("ai-training", "ai-training.generative")}
        - {
            (category, purpose)
            for category in ("profile.education", "profile.employment")
            for purpose in ("ai-training", "ai-training.generative")
        }
    ) | {
        ("location", purpose)
        for purpose in (
            "ai-training",
            "ai-training.generative",
            "ai-inference",
            "data-mining",
            "third-party-sharing",
        )
    }
    assert effect_of(event) == {(c, p, False, "erased") for c, p in eligible_before}


def test_an_update_turns_what_the_new_regime_decides(client: TestClient, keys: Keys) -> None:
    register(client, keys, "u1", jurisdiction="US")
    record(client, keys, "u1", {"category": "profile", "decision": "granted"})
    register(client, keys, "u1", jurisdiction="DE")  # opt-in now: only the grant stands
    event = all_events(client, keys)[-1]
    assert event["kind"] == "subject.updated"
    assert event["jurisdiction"] == "DE"
    assert effect_of(event) == {
        (c, p, False, "default-deny") for c, p in US_DEFAULT_ALLOW if not c.startswith("profile")
    }
    register(client, keys, "u1", jurisdiction="DE", minor=True)
    assert effect_of(all_events(client, keys)[-1]) == {
        (c, p, False, "minor") for c, p in US_DEFAULT_ALLOW if c.startswith("profile")
    }


def test_a_policy_publication_lists_the_pairs_it_changed(
    client: TestClient, keys: Keys, ledger: ConsentLedger
) -> None:
    register(client, keys, "u1", jurisdiction="US")
    document = ledger.current_policy().to_document()
    document["version"] += 1
    document["defaults"]["default"]["ai-training"]["content.public"] = "deny"
    ledger.publish_policy(Policy.from_document(document), actor="test")

    event = all_events(client, keys)[-1]
    assert event["kind"] == "policy.published"
    assert (event["subject"], event["subject_id"]) == (None, None)
    assert event["version"] == document["version"]
    assert sorted((item["category"], item["purpose"]) for item in event["effect"]) == [
        ("content.public", "ai-training"),
        ("content.public", "ai-training.generative"),
    ]
    assert all(set(item) == {"category", "purpose"} for item in event["effect"])


def test_a_withdrawal_that_hits_a_build_names_its_obligations(
    client: TestClient, keys: Keys
) -> None:
    for subject in ("u0", "u1"):
        register(client, keys, subject, jurisdiction="US")
    lines = post_build(
        client,
        keys,
        ndjson(
            {"record_id": "post-1", "subject_id": "u0", "category": "content.public"},
            {"record_id": "post-2", "subject_id": "u0", "category": "content.public"},
            {"record_id": "post-3", "subject_id": "u1", "category": "profile"},
        ),
    )
    assert lines[-1]["build"]["records"] == 3
    media = post_build(
        client,
        keys,
        ndjson({"record_id": "clip-1", "subject_id": "u0", "category": "content.public"}),
        path="/v1/datasets/media-train/versions/2",
    )
    assert media[-1]["build"]["records"] == 1
    record(client, keys, "u0", {"category": "content.public", "decision": "withdrawn"})
    withdrawal = all_events(client, keys)[-1]
    assert withdrawal["obligations"] == [
        {"dataset": "media-train", "version": "2", "records": 1},
        {"dataset": "posts-train", "version": "1", "records": 2},
    ]
    # A decision that turns nothing opens nothing.
    record(client, keys, "u1", {"category": "location", "decision": "denied"})
    assert all_events(client, keys)[-1]["obligations"] == []
    # An erasure hits the subject's other record.
    assert client.delete("/v1/subjects/u1", headers=keys.headers("admin")).status_code in (
        200,
        201,
    )
    erasure = all_events(client, keys)[-1]
    assert erasure["kind"] == "subject.erased"
    assert erasure["obligations"] == [{"dataset": "posts-train", "version": "1", "records": 1}]
    # The build's own entry has no subject and no effect.
    built, _ = [e for e in all_events(client, keys) if e["kind"] == "dataset.recorded"]
    assert (built["subject"], built["effect"], built["obligations"]) == (None, [], [])
    assert (built["dataset"], built["version"], built["records"]) == ("posts-train", "1", 3)


def test_a_withdrawal_dated_just_after_its_entry_still_reaches_the_feed(
    client: TestClient, keys: Keys
) -> None:
    # A platform stamps `effective` with its own clock, a little ahead of the ledger's.
    # The withdrawal is in force two seconds later, and no later entry will say so: if its
    # own event carries no effect, a cache that follows the feed keeps answering
    # "eligible" for good. (Contract question for SPEC §8: today the effect is taken at
    # the entry's time only.)
    register(client, keys, "u1", jurisdiction="US")
    effective = format_timestamp(utc_now() + timedelta(seconds=2))
    record(
        client,
        keys,
        "u1",
        {"category": "content.public", "decision": "withdrawn", "effective": effective},
    )
    event = all_events(client, keys)[-1]
    time.sleep(2.2)
    answer = check(client, keys, subject_id="u1", category="content.public").json()
    assert (answer["eligible"], answer["reason"]) == (False, "withdrawn")
    assert ("content.public", "ai-training", False, "withdrawn") in effect_of(event), event[
        "effect"
    ]


def test_what_a_decision_dated_later_changes_is_announced_with_the_instant_it_holds_from(
    client: TestClient, keys: Keys
) -> None:
    # A grant from next month, then an erasure today: a cache that applied the grant
    # `from` next month must also learn that, from then on, the answer is `erased`.
    register(client, keys, "u1", jurisdiction="DE")  # GDPR: opt-in, default-deny
    effective = format_timestamp(utc_now() + timedelta(days=30))
    record(
        client,
        keys,
        "u1",
        {"category": "content.public", "decision": "granted", "effective": effective},
    )
    grant = all_events(client, keys)[-1]
    assert {
        "category": "content.public",
        "purpose": "ai-training",
        "eligible": True,
        "reason": "consent",
        "from": effective,
    } in grant["effect"]
    answer = check(client, keys, subject_id="u1", category="content.public").json()
    assert answer["eligible"] is False  # not yet
    erased = client.delete("/v1/subjects/u1", headers=keys.headers("admin"))
    assert erased.status_code == 200, erased.text
    erasure = all_events(client, keys)[-1]
    assert erasure["kind"] == "subject.erased"
    assert {
        "category": "content.public",
        "purpose": "ai-training",
        "eligible": False,
        "reason": "erased",
        "from": effective,
    } in erasure["effect"]


def test_a_stream_ends_once_its_key_is_revoked(ledger: ConsentLedger, keys: Keys) -> None:
    # Checked before every batch and heartbeat: a stream must not outlive its key.
    async def follow() -> None:
        lines = changes_route._stream(ledger, ledger.changes(0, 1000), 1000, 0.05, keys.feed)
        assert b'"checkpoint"' in await lines.__anext__()  # the history, proven
        assert await lines.__anext__() == b'{"next":%d}\n' % ledger.tree_size()  # idle
        revoke_client(ledger.engine, "client-feed")
        with pytest.raises(StopAsyncIteration):
            await lines.__anext__()

    anyio.run(follow)


# --- long-poll --------------------------------------------------------------------------------


def test_a_long_poll_answers_when_another_writer_appends(
    client: TestClient, keys: Keys, settings: Settings, verifier: list[VerifierKey]
) -> None:
    size = changes(client, keys)["tree_size"]
    other = ConsentLedger(settings)  # another writer on the same database
    failures: list[BaseException] = []

    def write_later() -> None:
        try:
            time.sleep(1.0)
            other.register_subject("late", jurisdiction="US", actor="other")
        except BaseException as exc:  # reported below
            failures.append(exc)

    writer = threading.Thread(target=write_later)
    started = time.monotonic()
    writer.start()
    try:
        page = changes(client, keys, after=size, wait=20)
        elapsed = time.monotonic() - started
    finally:
        writer.join(timeout=30)
        other.close()
    assert not failures, failures
    assert [event["kind"] for event in page["events"]] == ["subject.registered"]
    assert page["events"][0]["subject_id"] == "late"
    assert 0.9 <= elapsed < 5, f"answered after {elapsed:.2f} s"
    verified_page(page, size, verifier)


def test_a_long_poll_times_out_with_an_empty_page(
    client: TestClient, keys: Keys, verifier: list[VerifierKey]
) -> None:
    size = changes(client, keys)["tree_size"]
    started = time.monotonic()
    page = changes(client, keys, after=size, wait=1.5)
    elapsed = time.monotonic() - started
    assert 1.4 <= elapsed < 5, f"answered after {elapsed:.2f} s"
    assert (page["events"], page["next"], page["tree_size"], page["proof"]) == ([], size, size, [])
    verified_page(page, size, verifier)


def test_a_long_poll_with_events_waiting_answers_at_once(client: TestClient, keys: Keys) -> None:
    register(client, keys, "u1", jurisdiction="US")
    started = time.monotonic()
    page = changes(client, keys, after=0, wait=30)
    assert time.monotonic() - started < 3
    assert page["events"]


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"after": 10_000}, "after"),
        ({"after": 2**63}, "after"),
        ({"after": -1}, "after"),
        ({"after": "abc"}, "after"),
        ({"after": "1.5"}, "after"),
        ({"after": ""}, "after"),
        ({"limit": 0}, "limit"),
        ({"limit": 10_001}, "limit"),
        ({"limit": -5}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"wait": 31}, "wait"),
        ({"wait": 30.5}, "wait"),
        ({"wait": -1}, "wait"),
        ({"wait": "soon"}, "wait"),
        ({"wait": "nan"}, "wait"),
        ({"wait": "inf"}, "wait"),
    ],
)
def test_bad_input_is_a_problem_naming_the_parameter(
    client: TestClient, keys: Keys, params: dict[str, Any], field: str
) -> None:
    response = client.get(CHANGES, params=params, headers=keys.headers("feed"))
    assert_problem(response, 422, field)


def test_a_cursor_beyond_the_log_says_how_large_the_log_is(client: TestClient, keys: Keys) -> None:
    size = changes(client, keys)["tree_size"]
    response = client.get(CHANGES, params={"after": size + 1}, headers=keys.headers("feed"))
    body = assert_problem(response, 422, "after")
    assert str(size) in body["detail"], body


def test_limits_at_their_bounds_are_accepted(client: TestClient, keys: Keys) -> None:
    for params in ({"limit": 1}, {"limit": 10_000}, {"wait": 0}, {"wait": 0.5}):
        changes(client, keys, **params)


@pytest.mark.parametrize("scope", ["check", "record", "read", "audit", "admin"])
def test_the_feed_needs_its_own_scope(client: TestClient, keys: Keys, scope: str) -> None:
    response = client.get(CHANGES, headers=keys.headers(scope))
    assert_problem(response, 403)


def test_the_feed_needs_a_key(client: TestClient, keys: Keys) -> None:
    assert_problem(client.get(CHANGES), 401)
    assert_problem(client.get(CHANGES, headers=keys.headers("revoked")), 401)


# --- filtering by kind (the facade) -----------------------------------------------------------


def test_a_filtered_page_proves_each_event_by_inclusion(
    ledger: ConsentLedger, verifier: list[VerifierKey]
) -> None:
    for number in range(4):
        ledger.register_subject(f"u{number}", jurisdiction="US", actor="test")
        ledger.record_consents(
            f"u{number}", [DecisionRequest("content.public", "withdrawn")], actor="test"
        )
    ledger.erase_subject("u2", actor="test")
    size = ledger.tree_size()
    wanted = frozenset({"consent.recorded", "subject.erased"})

    seen: list[dict[str, Any]] = []
    cursor = 0
    while cursor < size:
        page = ledger.changes(cursor, 3, kinds=wanted)
        assert page.next == min(cursor + 3, size)  # past the skipped entries too
        assert page.proof == []
        checkpoint = open_checkpoint(page.checkpoint, verifier, origin=TEST_ORIGIN)
        assert checkpoint.size == page.tree_size
        for event in page.events:
            assert event["kind"] in wanted
            assert cursor <= event["seq"] < page.next
            check_canonical(event)
            leaf = merkle.leaf_hash(base64.b64decode(event["canonical"]))
            proof = [base64.b64decode(node) for node in event["inclusion"]]
            merkle.verify_inclusion(leaf, event["seq"], checkpoint.size, proof, checkpoint.root)
        json_page = page.to_json()
        assert json_page["events"] == page.events
        seen += page.events
        cursor = page.next
    assert [event["kind"] for event in seen] == ["consent.recorded"] * 4 + ["subject.erased"]
    unfiltered = [event for event in ledger.changes(0, 1000).events if event["kind"] in wanted]
    strip = {"inclusion"}
    assert [{k: v for k, v in e.items() if k not in strip} for e in seen] == unfiltered


def test_the_facade_refuses_bad_cursors_and_limits(ledger: ConsentLedger) -> None:
    from ledger.errors import InvalidInput

    size = ledger.tree_size()
    for after, limit, field in (
        (size + 1, 10, "after"),
        (-1, 10, "after"),
        (0, 0, "limit"),
        (0, 10_001, "limit"),
    ):
        with pytest.raises(InvalidInput) as raised:
            ledger.changes(after, limit)
        assert raised.value.field == field
