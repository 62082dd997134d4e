"""Subjects and consents over HTTP: registration, receipts, idempotency, views, erasure."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from ledger.errors import VerificationError
from ledger.service import ConsentLedger
from ledger.tlog.evidence import EvidenceBundle, verify_bundle
from ledger.tlog.notes import VerifierKey, key_id
from tests.api.helpers import Keys, assert_problem, check, record, register

GRANT_PROFILE = {"category": "profile", "decision": "granted"}


def verified(document: object, verifier: list[VerifierKey]) -> EvidenceBundle:
    """Parse an evidence bundle from JSON and check it with nothing but the verifier key."""
    bundle = EvidenceBundle.from_json(document)
    verify_bundle(bundle, verifier)
    return bundle


# --- PUT /v1/subjects/{id} ------------------------------------------------------------------


def test_put_subject_registers_updates_and_is_idempotent(
    client: TestClient, keys: Keys, ledger: ConsentLedger, verifier: list[VerifierKey]
) -> None:
    headers = keys.headers("record")
    first = client.put("/v1/subjects/alice", json={"jurisdiction": "us"}, headers=headers)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["token"] == ledger.tree_size()
    bundle = verified(body["receipt"], verifier)
    assert [item.entry["kind"] for item in bundle.entries] == ["subject.registered"]
    data = bundle.entries[0].entry["data"]
    assert data["jurisdiction"] == "US"
    assert data["minor"] is False
    # The log never holds the raw subject id.
    assert "alice" not in bundle.entries[0].canonical.decode()

    update = client.put("/v1/subjects/alice", json={"jurisdiction": "FR"}, headers=headers)
    assert update.status_code == 200, update.text
    updated = verified(update.json()["receipt"], verifier)
    assert [item.entry["kind"] for item in updated.entries] == ["subject.updated"]
    assert updated.entries[0].entry["data"]["jurisdiction"] == "FR"
    assert "minor" not in updated.entries[0].entry["data"]  # only changed fields
    assert update.json()["token"] == body["token"] + 1

    size = ledger.tree_size()
    same = client.put("/v1/subjects/alice", json={"jurisdiction": "FR"}, headers=headers)
    assert same.status_code == 200, same.text
    assert same.json() == {"token": size, "receipt": None}
    assert ledger.tree_size() == size


def test_put_subject_minor_and_null_jurisdiction(client: TestClient, keys: Keys) -> None:
    response = client.put(
        "/v1/subjects/kid", json={"jurisdiction": None, "minor": True}, headers=keys.headers()
    )
    assert response.status_code == 201, response.text
    assert response.json()["receipt"]["entries"][0]["entry"]["data"]["minor"] is True
    view = client.get("/v1/subjects/kid/consents", headers=keys.headers("read")).json()
    assert view["minor"] is True
    assert view["jurisdiction"] is None
    assert view["regime"] == "unknown"


@pytest.mark.parametrize("jurisdiction", ["ZZ", "USA", "1", "xx"])
def test_put_subject_bad_jurisdiction_is_422(
    client: TestClient, keys: Keys, ledger: ConsentLedger, jurisdiction: str
) -> None:
    size = ledger.tree_size()
    response = client.put(
        "/v1/subjects/bob", json={"jurisdiction": jurisdiction}, headers=keys.headers()
    )
    assert_problem(response, 422, "jurisdiction")
    assert ledger.tree_size() == size


def test_put_subject_wrong_types_are_422(client: TestClient, keys: Keys) -> None:
    assert_problem(
        client.put("/v1/subjects/bob", json={"jurisdiction": 5}, headers=keys.headers()),
        422,
        "jurisdiction",
    )
    assert_problem(
        client.put("/v1/subjects/bob", json={"minor": [1]}, headers=keys.headers()), 422, "minor"
    )
    assert_problem(client.put("/v1/subjects/bob", json=[1], headers=keys.headers()), 422)
    assert_problem(
        client.put(
            "/v1/subjects/bob",
            content=b"{not json",
            headers={**keys.headers(), "content-type": "application/json"},
        ),
        422,
    )


def test_put_subject_unknown_field_is_422(client: TestClient, keys: Keys) -> None:
    response = client.put(
        "/v1/subjects/bob", json={"jurisdiction": "US", "country": "US"}, headers=keys.headers()
    )
    assert_problem(response, 422, "country")


def test_put_subject_bad_ids(client: TestClient, keys: Keys) -> None:
    # A control character in the id, and an id over 256 characters.
    assert_problem(client.put("/v1/subjects/a%00b", json={}, headers=keys.headers()), 422)
    assert_problem(client.put("/v1/subjects/" + "x" * 257, json={}, headers=keys.headers()), 422)
    ok = client.put("/v1/subjects/" + "x" * 256, json={}, headers=keys.headers())
    assert ok.status_code == 201, ok.text


# --- POST /v1/subjects/{id}/consents -------------------------------------------------------


def test_post_consents_returns_verifiable_receipt(
    client: TestClient, keys: Keys, ledger: ConsentLedger, verifier: list[VerifierKey]
) -> None:
    register(client, keys, "alice", jurisdiction="FR")
    response = client.post(
        "/v1/subjects/alice/consents",
        json={
            "decisions": [
                GRANT_PROFILE,
                {
                    "category": "biometric.face",
                    "purpose": "ai-training.generative",
                    "decision": "granted",
                    "explicit": True,
                    "method": "web-form",
                    "notice": "privacy-policy-v7",
                    "effective": "2026-01-01T00:00:00+01:00",
                    "expires": "2030-01-01T00:00:00Z",
                },
            ]
        },
        headers=keys.headers("record"),
    )
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["token"] == ledger.tree_size()
    bundle = verified(body["receipt"], verifier)
    assert bundle.verifier_key == ledger.verifier_key()
    assert [item.index for item in bundle.entries] == [body["token"] - 2, body["token"] - 1]
    entries = [item.entry for item in bundle.entries]
    assert all(entry["kind"] == "consent.recorded" for entry in entries)
    assert all(entry["actor"] == "client-record" for entry in entries)
    assert entries[0]["data"]["purpose"] == "ai-training"  # the default purpose
    assert entries[0]["data"]["method"] == "api"
    assert entries[1]["data"]["effective"] == "2025-12-31T23:00:00.000000Z"
    assert entries[1]["data"]["expires"] == "2030-01-01T00:00:00.000000Z"
    assert entries[1]["data"]["explicit"] is True
    assert entries[1]["data"]["notice"] == "privacy-policy-v7"
    # The readable entry in the receipt is what the canonical bytes say.
    assert body["receipt"]["entries"][0]["entry"] == entries[0]


def test_receipt_does_not_verify_under_another_key(
    client: TestClient, keys: Keys, ledger: ConsentLedger, verifier: list[VerifierKey]
) -> None:
    register(client, keys, "alice")
    receipt = record(client, keys, "alice", GRANT_PROFILE)["receipt"]
    verified(receipt, verifier)
    # Same origin, another Ed25519 key: the bundle's own `verifier_key` is no trust anchor.
    public = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    name = verifier[0].name
    stranger = VerifierKey(name=name, key_id=key_id(name, public), public_key=public)
    with pytest.raises(VerificationError):
        verify_bundle(EvidenceBundle.from_json(receipt), [stranger])
    # A tampered entry no longer verifies either.
    tampered = {**receipt, "entries": [{**receipt["entries"][0], "index": 0}]}
    with pytest.raises(VerificationError):
        verify_bundle(EvidenceBundle.from_json(tampered), verifier)


@pytest.mark.parametrize(
    ("decision", "field"),
    [
        ({"category": "nope", "decision": "granted"}, "decisions[0].category"),
        ({"category": "profile", "purpose": "nope", "decision": "granted"}, "decisions[0].purpose"),
        ({"category": "profile", "decision": "maybe"}, "decisions[0].decision"),
        ({"category": "profile", "decision": "granted", "effective": "yesterday"}, None),
        (
            {
                "category": "profile",
                "decision": "granted",
                "effective": "2026-01-02T00:00:00Z",
                "expires": "2026-01-01T00:00:00Z",
            },
            "decisions[0].expires",
        ),
        ({"category": "profile", "decision": "granted", "method": "has space"}, None),
        ({"category": "profile", "decision": "granted", "colour": "red"}, None),
    ],
)
def test_post_consents_invalid_decision_is_422_and_appends_nothing(
    client: TestClient,
    keys: Keys,
    ledger: ConsentLedger,
    decision: dict[str, object],
    field: str | None,
) -> None:
    register(client, keys, "alice")
    size = ledger.tree_size()
    response = client.post(
        "/v1/subjects/alice/consents",
        # A valid decision first: all or none, so it must not be appended either.
        json={"decisions": [GRANT_PROFILE, decision]},
        headers=keys.headers("record"),
    )
    body = assert_problem(response, 422)
    fields = [error["field"] for error in body["errors"]]
    assert all(name.startswith("decisions[1]") for name in fields), fields
    if field is not None:
        assert field.replace("[0]", "[1]") in fields
    assert ledger.tree_size() == size


def test_post_consents_unknown_category_names_the_field(
    client: TestClient, keys: Keys, ledger: ConsentLedger
) -> None:
    register(client, keys, "alice")
    size = ledger.tree_size()
    response = client.post(
        "/v1/subjects/alice/consents",
        json={"decisions": [{"category": "dms", "decision": "granted"}]},
        headers=keys.headers("record"),
    )
    assert_problem(response, 422, "decisions[0].category")
    assert ledger.tree_size() == size


def test_post_consents_empty_or_malformed_body_is_422(client: TestClient, keys: Keys) -> None:
    register(client, keys, "alice")
    url = "/v1/subjects/alice/consents"
    assert_problem(client.post(url, json={"decisions": []}, headers=keys.headers()), 422)
    assert_problem(client.post(url, json={}, headers=keys.headers()), 422, "decisions")
    assert_problem(client.post(url, json={"decisions": {}}, headers=keys.headers()), 422)
    assert_problem(client.post(url, json={"decisions": [1]}, headers=keys.headers()), 422)


def test_post_consents_for_unregistered_subject_is_404(
    client: TestClient, keys: Keys, ledger: ConsentLedger
) -> None:
    size = ledger.tree_size()
    response = client.post(
        "/v1/subjects/nobody/consents",
        json={"decisions": [GRANT_PROFILE]},
        headers=keys.headers("record"),
    )
    assert_problem(response, 404)
    assert ledger.tree_size() == size


def test_idempotency_key_retry_returns_the_first_answer(
    client: TestClient, keys: Keys, ledger: ConsentLedger, verifier: list[VerifierKey]
) -> None:
    register(client, keys, "alice")
    request = {"json": {"decisions": [GRANT_PROFILE]}}
    headers = {**keys.headers("record"), "Idempotency-Key": "write-0001"}
    first = client.post("/v1/subjects/alice/consents", headers=headers, **request)
    assert first.status_code == 201, first.text
    size = ledger.tree_size()
    assert first.json()["token"] == size

    retry = client.post("/v1/subjects/alice/consents", headers=headers, **request)
    assert retry.status_code == 201, retry.text
    assert retry.content == first.content
    assert ledger.tree_size() == size

    # Still the first answer after other writes moved the log on.
    register(client, keys, "bob")
    later = client.post("/v1/subjects/alice/consents", headers=headers, **request)
    assert later.content == first.content
    assert ledger.tree_size() == size + 1
    verified(later.json()["receipt"], verifier)

    # Without the key, the same body is a new write.
    again = client.post("/v1/subjects/alice/consents", headers=keys.headers("record"), **request)
    assert again.json()["token"] == size + 2


def test_idempotency_key_with_another_body_is_422(
    client: TestClient, keys: Keys, ledger: ConsentLedger
) -> None:
    register(client, keys, "alice")
    headers = {**keys.headers("record"), "Idempotency-Key": "write-0002"}
    first = client.post(
        "/v1/subjects/alice/consents", json={"decisions": [GRANT_PROFILE]}, headers=headers
    )
    assert first.status_code == 201, first.text
    size = ledger.tree_size()
    other = client.post(
        "/v1/subjects/alice/consents",
        json={"decisions": [{"category": "profile", "decision": "denied"}]},
        headers=headers,
    )
    assert_problem(other, 422, "Idempotency-Key")
    assert ledger.tree_size() == size


def test_idempotency_key_is_free_again_after_a_failed_write(
    client: TestClient, keys: Keys, ledger: ConsentLedger
) -> None:
    register(client, keys, "alice")
    headers = {**keys.headers("record"), "Idempotency-Key": "write-0003"}
    bad = client.post(
        "/v1/subjects/alice/consents",
        json={"decisions": [{"category": "nope", "decision": "granted"}]},
        headers=headers,
    )
    assert_problem(bad, 422, "decisions[0].category")
    good = client.post(
        "/v1/subjects/alice/consents", json={"decisions": [GRANT_PROFILE]}, headers=headers
    )
    assert good.status_code == 201, good.text
    assert good.json()["token"] == ledger.tree_size()


def test_idempotency_keys_belong_to_their_client(
    client: TestClient, keys: Keys, ledger: ConsentLedger
) -> None:
    register(client, keys, "alice")
    body = {"decisions": [GRANT_PROFILE]}
    one = client.post(
        "/v1/subjects/alice/consents",
        json=body,
        headers={**keys.headers("record"), "Idempotency-Key": "shared"},
    )
    two = client.post(
        "/v1/subjects/alice/consents",
        json=body,
        headers={**keys.headers("all"), "Idempotency-Key": "shared"},
    )
    assert one.status_code == two.status_code == 201
    assert two.json()["token"] == one.json()["token"] + 1 == ledger.tree_size()


# --- GET consents / history ----------------------------------------------------------------


def test_get_consents_shows_decisions_and_the_eligibility_matrix(
    client: TestClient, keys: Keys, ledger: ConsentLedger
) -> None:
    register(client, keys, "alice", jurisdiction="DE")
    written = record(client, keys, "alice", GRANT_PROFILE)
    response = client.get("/v1/subjects/alice/consents", headers=keys.headers("read"))
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["subject_id"] == "alice"
    assert view["jurisdiction"] == "DE"
    assert view["regime"] == "gdpr"
    assert view["minor"] is False
    assert view["checked_at"] == ledger.tree_size()
    assert view["policy_version"] == 1
    seq = written["token"] - 1
    assert [(d["seq"], d["category"], d["purpose"], d["decision"]) for d in view["decisions"]] == [
        (seq, "profile", "ai-training", "granted")
    ]
    policy = ledger.current_policy()
    cells = {(cell["category"], cell["purpose"]): cell for cell in view["eligibility"]}
    assert set(cells) == {(c, p) for c in policy.categories for p in policy.purposes}
    assert cells["profile", "ai-training"] == {
        "category": "profile",
        "purpose": "ai-training",
        "eligible": True,
        "reason": "consent",
        "decided_by": seq,
    }
    assert cells["profile.employment", "ai-training"]["reason"] == "consent"
    assert cells["profile", "ai-inference"]["reason"] == "default-deny"
    assert cells["content.private", "ai-training"]["reason"] == "prohibited"
    assert cells["biometric", "ai-training"]["reason"] == "explicit-consent-required"
    # The matrix agrees with single checks.
    answer = check(client, keys, subject_id="alice", category="profile").json()
    assert (answer["eligible"], answer["reason"], answer["decided_by"]) == (True, "consent", seq)


def test_get_consents_and_history_of_unknown_subject_are_404(
    client: TestClient, keys: Keys
) -> None:
    assert_problem(client.get("/v1/subjects/nobody/consents", headers=keys.headers("read")), 404)
    assert_problem(client.get("/v1/subjects/nobody/history", headers=keys.headers("read")), 404)


def test_history_is_a_verifiable_bundle_of_the_subjects_entries(
    client: TestClient, keys: Keys, ledger: ConsentLedger, verifier: list[VerifierKey]
) -> None:
    registered = register(client, keys, "alice", jurisdiction="US")
    register(client, keys, "bob")  # someone else's entry in between
    written = record(
        client, keys, "alice", GRANT_PROFILE, {"category": "location", "decision": "denied"}
    )
    updated = register(client, keys, "alice", jurisdiction="CA")
    response = client.get("/v1/subjects/alice/history", headers=keys.headers("read"))
    assert response.status_code == 200, response.text
    bundle = verified(response.json(), verifier)
    expected = [
        registered["token"] - 1,
        written["token"] - 2,
        written["token"] - 1,
        updated["token"] - 1,
    ]
    assert [item.index for item in bundle.entries] == expected
    assert [item.entry["kind"] for item in bundle.entries] == [
        "subject.registered",
        "consent.recorded",
        "consent.recorded",
        "subject.updated",
    ]
    refs = {item.entry["data"]["subject"] for item in bundle.entries}
    assert len(refs) == 1
    checkpoint = verify_bundle(bundle, verifier)
    assert checkpoint.size == ledger.tree_size()


# --- DELETE /v1/subjects/{id} --------------------------------------------------------------


def test_erasure(
    client: TestClient, keys: Keys, ledger: ConsentLedger, verifier: list[VerifierKey]
) -> None:
    register(client, keys, "alice", jurisdiction="US")
    before = record(client, keys, "alice", GRANT_PROFILE)["token"]
    assert check(client, keys, subject_id="alice", category="profile").json()["eligible"] is True

    response = client.delete("/v1/subjects/alice", headers=keys.headers("admin"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token"] == ledger.tree_size() == before + 1
    bundle = verified(body["receipt"], verifier)
    assert [item.entry["kind"] for item in bundle.entries] == ["subject.erased"]
    assert bundle.entries[0].entry["actor"] == "client-admin"

    answer = check(client, keys, subject_id="alice", category="profile")
    assert answer.status_code == 200, answer.text
    assert answer.json()["eligible"] is False
    assert answer.json()["reason"] == "erased"
    # Erasure holds at every tree size: the data to answer otherwise is gone.
    old = check(client, keys, subject_id="alice", category="profile", as_of=before)
    assert old.json()["reason"] == "erased"

    assert_problem(client.get("/v1/subjects/alice/consents", headers=keys.headers("read")), 409)
    assert_problem(client.get("/v1/subjects/alice/history", headers=keys.headers("read")), 409)
    size = ledger.tree_size()
    assert_problem(client.delete("/v1/subjects/alice", headers=keys.headers("admin")), 409)
    assert_problem(client.put("/v1/subjects/alice", json={}, headers=keys.headers("record")), 409)
    assert_problem(
        client.post(
            "/v1/subjects/alice/consents",
            json={"decisions": [GRANT_PROFILE]},
            headers=keys.headers("record"),
        ),
        409,
    )
    assert ledger.tree_size() == size


def test_erasing_an_unknown_subject_is_404(
    client: TestClient, keys: Keys, ledger: ConsentLedger
) -> None:
    size = ledger.tree_size()
    assert_problem(client.delete("/v1/subjects/nobody", headers=keys.headers("admin")), 404)
    assert ledger.tree_size() == size


# --- inputs that must never be a 500 --------------------------------------------------------


@pytest.mark.parametrize("effective", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00"])
def test_out_of_range_timestamp_is_422(client: TestClient, keys: Keys, effective: str) -> None:
    register(client, keys, "alice")
    response = client.post(
        "/v1/subjects/alice/consents",
        json={"decisions": [{**GRANT_PROFILE, "effective": effective}]},
        headers=keys.headers("record"),
    )
    assert_problem(response, 422, "decisions[0].effective")


def test_notice_with_nul_character_is_not_a_500(
    client: TestClient, keys: Keys, database_url: str, request: pytest.FixtureRequest
) -> None:
    register(client, keys, "alice")
    response = client.post(
        "/v1/subjects/alice/consents",
        json={"decisions": [{**GRANT_PROFILE, "notice": "v1\u0000"}]},
        headers=keys.headers("record"),
    )
    assert response.status_code in (201, 422), response.text
    if response.status_code == 422:
        assert_problem(response, 422, "decisions[0].notice")
