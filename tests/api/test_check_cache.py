"""Single checks answered from memory: the same answers, revocation and writes seen in time."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlmodel import col

from ledger.service import ConsentLedger
from ledger.service.clients import NOT_CACHED, KeyCache, create_client, revoke_client
from ledger.service.head import HEAD_MAX_AGE, HEAD_STALE_LIMIT
from ledger.settings import Settings
from ledger.store.db import write_session
from ledger.store.schema import ApiClient
from tests.api.helpers import Keys, assert_problem, auth, check, record, register

PAIRS = [
    ("us", "content.public", None),
    ("us", "profile.employment", "ai-training"),
    ("us", "biometric.face", None),
    ("fr", "profile", None),
    ("fr", "activity", "data-mining"),
    ("minor", "content.public", None),
    ("nobody", "content.public", None),
    ("us", "content.private.messages", None),
]


def _wait_past_head_max_age(ledger: ConsentLedger) -> None:
    # The API answers at a head up to HEAD_STALE_LIMIT old where reading it is remote.
    engine = ledger.engine.dialect.name
    limit = 0.0 if engine == "sqlite" else HEAD_STALE_LIMIT
    time.sleep(max(limit, HEAD_MAX_AGE.get(engine, 0.0)) + 0.02)


@pytest.fixture
def subjects(client: TestClient, keys: Keys) -> None:
    register(client, keys, "us", jurisdiction="US")
    record(client, keys, "us", {"category": "profile", "decision": "denied"})
    register(client, keys, "fr", jurisdiction="FR")
    record(client, keys, "fr", {"category": "*", "purpose": "*", "decision": "granted"})
    register(client, keys, "minor", jurisdiction="US", minor=True)


@pytest.mark.usefixtures("subjects")
def test_repeated_checks_give_the_answers_check_gives(
    client: TestClient, keys: Keys, ledger: ConsentLedger
) -> None:
    at = "2026-11-30T12:00:00.000000Z"
    for _ in range(3):  # the first fills the caches, the others are answered from them
        for subject_id, category, purpose in PAIRS:
            response = check(
                client, keys, subject_id=subject_id, category=category, purpose=purpose, at=at
            )
            assert response.status_code == 200, response.text
            expected = ledger.check(subject_id, category, purpose, at=at).to_json()
            assert response.json() == expected


@pytest.mark.usefixtures("subjects")
def test_check_from_memory_answers_only_what_it_holds(ledger: ConsentLedger) -> None:
    at = "2026-11-30T12:00:00.000000Z"
    assert ledger.check_from_memory("us", "content.public", at=at) is None  # nothing cached
    expected = ledger.check("us", "content.public", at=at)
    assert ledger.check_from_memory("us", "content.public", at=at) == expected
    assert ledger.check_from_memory("nobody", "content.public", at=at) is None
    assert ledger.check_from_memory("us", "content.public", as_of=10**6, at=at) is None
    size = ledger.tree_size()
    assert ledger.check_from_memory("us", "content.public", at_least_as_fresh=size + 1) is None


@pytest.mark.usefixtures("subjects")
def test_a_write_is_seen_by_the_next_check(client: TestClient, keys: Keys) -> None:
    assert check(client, keys, subject_id="us", category="activity").json()["eligible"] is True
    written = record(client, keys, "us", {"category": "activity", "decision": "denied"})
    answer = check(client, keys, subject_id="us", category="activity").json()
    assert (answer["eligible"], answer["reason"]) == (False, "refused")
    assert answer["checked_at"] == written["token"]


@pytest.mark.usefixtures("subjects")
def test_a_write_by_another_process_is_seen_within_the_head_max_age(
    client: TestClient, keys: Keys, ledger: ConsentLedger, settings: Settings
) -> None:
    assert check(client, keys, subject_id="fr", category="profile").json()["eligible"] is True
    other = ConsentLedger(settings)
    try:
        other.erase_subject("fr", actor="test")
        token = other.tree_size()
    finally:
        other.close()
    _wait_past_head_max_age(ledger)
    answer = check(client, keys, subject_id="fr", category="profile").json()
    assert (answer["eligible"], answer["reason"], answer["checked_at"]) == (
        False,
        "erased",
        token,
    )


def test_a_revoked_key_is_refused_at_once(client: TestClient, ledger: ConsentLedger) -> None:
    _, key = create_client(ledger.engine, "soon-revoked", ["check"])
    body = {"subject_id": "nobody", "category": "profile"}
    for _ in range(2):  # cached after the first
        response = client.post("/v1/eligibility/check", json=body, headers=auth(key))
        assert response.status_code == 200, response.text
    revoke_client(ledger.engine, "soon-revoked")
    assert_problem(client.post("/v1/eligibility/check", json=body, headers=auth(key)), 401)


def test_a_key_revoked_by_another_process_is_refused_within_the_head_max_age(
    client: TestClient, ledger: ConsentLedger
) -> None:
    _, key = create_client(ledger.engine, "revoked-elsewhere", ["check"])
    body = {"subject_id": "nobody", "category": "profile"}
    for _ in range(2):
        assert client.post("/v1/eligibility/check", json=body, headers=auth(key)).is_success
    # What `consent-ledger clients revoke` in another process does, without this
    # process's own revocation counter moving.
    with write_session(ledger.engine) as session:
        session.execute(
            update(ApiClient)
            .where(col(ApiClient.name) == "revoked-elsewhere")
            .values(revoked="2026-12-01T00:00:00.000000Z")
        )
    _wait_past_head_max_age(ledger)
    assert_problem(client.post("/v1/eligibility/check", json=body, headers=auth(key)), 401)


def test_a_cached_key_id_with_another_secret_is_refused(
    client: TestClient, ledger: ConsentLedger
) -> None:
    _, key = create_client(ledger.engine, "cached", ["check"])
    body = {"subject_id": "nobody", "category": "profile"}
    assert client.post("/v1/eligibility/check", json=body, headers=auth(key)).is_success
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert_problem(client.post("/v1/eligibility/check", json=body, headers=auth(forged)), 401)
    assert client.post("/v1/eligibility/check", json=body, headers=auth(key)).is_success


def test_key_cache_keeps_keys_for_one_generation(ledger: ConsentLedger) -> None:
    client, key = create_client(ledger.engine, "gen", ["read"])
    cache = KeyCache()
    assert cache.lookup(key, 1) is NOT_CACHED
    assert cache.authenticate(ledger.engine, key, 1) == client
    assert cache.lookup(key, 1) == client
    assert cache.lookup(key[:-1] + ("x" if key[-1] != "x" else "y"), 1) is None
    assert cache.lookup("not-a-key", 1) is None
    assert cache.lookup(key, 2) is NOT_CACHED  # a new generation starts empty
    # A lookup made under a generation older than the cache's is not remembered.
    assert cache.authenticate(ledger.engine, key, 1) == client
    assert cache.lookup(key, 2) is NOT_CACHED
