"""Eligibility over HTTP: single checks, batches and NDJSON streams."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from ledger.service import ConsentLedger
from ledger.tlog.notes import VerifierKey, open_checkpoint
from tests.api.helpers import Keys, assert_problem, check, record, register

ANSWER_FIELDS = {"eligible", "reason", "decided_by", "policy_version", "checked_at", "at"}
HEADER_FIELDS = {"checked_at", "at", "checkpoint", "policy_version"}


@pytest.fixture
def people(client: TestClient, keys: Keys) -> dict[str, int]:
    """Subjects covering every rule of SPEC §3.4; returns the seq of each deciding entry."""
    register(client, keys, "us-default", jurisdiction="US")
    register(client, keys, "fr-granted", jurisdiction="FR")
    granted = record(client, keys, "fr-granted", {"category": "profile", "decision": "granted"})
    register(client, keys, "us-denied", jurisdiction="US")
    denied = record(client, keys, "us-denied", {"category": "*", "decision": "denied"})
    register(client, keys, "us-withdrawn", jurisdiction="US")
    record(client, keys, "us-withdrawn", {"category": "activity", "decision": "granted"})
    withdrawn = record(
        client, keys, "us-withdrawn", {"category": "activity", "decision": "withdrawn"}
    )
    register(client, keys, "minor", jurisdiction="US", minor=True)
    register(client, keys, "bio", jurisdiction="US")
    record(client, keys, "bio", {"category": "biometric", "decision": "granted"})
    register(client, keys, "bio-explicit", jurisdiction="FR")
    explicit = record(
        client,
        keys,
        "bio-explicit",
        {"category": "biometric.face", "decision": "granted", "explicit": True},
    )
    return {
        "granted": granted["token"] - 1,
        "denied": denied["token"] - 1,
        "withdrawn": withdrawn["token"] - 1,
        "explicit": explicit["token"] - 1,
    }


# --- POST /v1/eligibility/check -----------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "category", "purpose", "eligible", "reason", "decider"),
    [
        ("nobody", "profile", None, False, "unknown-subject", None),
        ("us-default", "content.private.messages", None, False, "prohibited", None),
        ("minor", "profile", None, False, "minor", None),
        ("fr-granted", "profile.education", None, True, "consent", "granted"),
        ("fr-granted", "profile", "ai-inference", False, "default-deny", None),
        ("us-denied", "profile", None, False, "refused", "denied"),
        ("us-withdrawn", "activity", None, False, "withdrawn", "withdrawn"),
        ("bio", "biometric.voice", None, False, "explicit-consent-required", None),
        ("bio-explicit", "biometric.face", "ai-training.generative", True, "consent", "explicit"),
        ("us-default", "profile", "ai-training", True, "default-allow", None),
        ("us-default", "location", None, False, "default-deny", None),
    ],
)
def test_check_answers(
    client: TestClient,
    keys: Keys,
    ledger: ConsentLedger,
    people: dict[str, int],
    subject: str,
    category: str,
    purpose: str | None,
    eligible: bool,
    reason: str,
    decider: str | None,
) -> None:
    body: dict[str, Any] = {"subject_id": subject, "category": category}
    if purpose is not None:
        body["purpose"] = purpose
    response = check(client, keys, **body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == ANSWER_FIELDS
    assert answer["eligible"] is eligible
    assert answer["reason"] == reason
    assert answer["decided_by"] == (people[decider] if decider else None)
    assert answer["policy_version"] == 1
    assert answer["checked_at"] == ledger.tree_size()
    assert answer["at"].endswith("Z")


def test_check_as_of_answers_at_an_earlier_tree_size(
    client: TestClient, keys: Keys, ledger: ConsentLedger
) -> None:
    registered = register(client, keys, "alice", jurisdiction="FR")["token"]
    granted = record(client, keys, "alice", {"category": "profile", "decision": "granted"})
    denied = record(client, keys, "alice", {"category": "profile", "decision": "denied"})

    def answer(**extra: Any) -> dict[str, Any]:
        response = check(client, keys, subject_id="alice", category="profile", **extra)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    assert answer()["reason"] == "refused"
    assert answer(as_of=granted["token"])["reason"] == "consent"
    assert answer(as_of=granted["token"])["checked_at"] == granted["token"]
    assert answer(as_of=registered)["reason"] == "default-deny"
    assert answer(as_of=registered - 1)["reason"] == "unknown-subject"
    assert answer(as_of=denied["token"])["reason"] == "refused"
    # The same as_of and at always give the same answer.
    at = "2030-01-01T00:00:00Z"
    assert answer(as_of=granted["token"], at=at) == answer(as_of=granted["token"], at=at)
    assert ledger.tree_size() == denied["token"]


@pytest.mark.parametrize("as_of", [0, -1, 10_000, "3", 1.5, True])
def test_check_bad_as_of_is_422(client: TestClient, keys: Keys, as_of: object) -> None:
    assert_problem(check(client, keys, subject_id="a", category="profile", as_of=as_of), 422)


def test_check_at_a_time(client: TestClient, keys: Keys) -> None:
    register(client, keys, "alice", jurisdiction="FR")
    record(
        client,
        keys,
        "alice",
        {
            "category": "profile",
            "decision": "granted",
            "effective": "2030-01-01T00:00:00Z",
            "expires": "2031-01-01T00:00:00Z",
        },
    )

    def at(moment: str) -> dict[str, Any]:
        response = check(client, keys, subject_id="alice", category="profile", at=moment)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    assert at("2029-12-31T23:59:59Z")["reason"] == "default-deny"
    during = at("2030-06-01T02:00:00+02:00")
    assert during["reason"] == "consent"
    assert during["at"] == "2030-06-01T00:00:00.000000Z"
    assert at("2031-01-01T00:00:00Z")["reason"] == "default-deny"  # expired


@pytest.mark.parametrize("moment", ["yesterday", "2030-01-01", "2030-01-01T00:00:00", 5])
def test_check_bad_at_is_422(client: TestClient, keys: Keys, moment: object) -> None:
    assert_problem(check(client, keys, subject_id="a", category="profile", at=moment), 422, "at")


def test_check_at_out_of_range_is_422(client: TestClient, keys: Keys) -> None:
    response = check(
        client, keys, subject_id="a", category="profile", at="9999-12-31T23:59:59-01:00"
    )
    assert_problem(response, 422, "at")


def test_check_at_least_as_fresh(client: TestClient, keys: Keys, ledger: ConsentLedger) -> None:
    register(client, keys, "alice", jurisdiction="FR")
    token = record(client, keys, "alice", {"category": "profile", "decision": "granted"})["token"]
    response = check(client, keys, subject_id="alice", category="profile", at_least_as_fresh=token)
    assert response.status_code == 200, response.text
    assert response.json()["checked_at"] >= token
    assert response.json()["reason"] == "consent"


def test_check_not_fresh_enough_is_503_with_retry_after(
    client: TestClient, keys: Keys, ledger: ConsentLedger
) -> None:
    wanted = ledger.tree_size() + 1_000
    started = time.monotonic()
    response = check(client, keys, subject_id="a", category="profile", at_least_as_fresh=wanted)
    assert time.monotonic() - started < 10
    assert_problem(response, 503)
    assert int(response.headers["Retry-After"]) >= 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"subject_id": "a", "category": "dms"}, "category"),
        ({"subject_id": "a", "category": "profile", "purpose": "marketing"}, "purpose"),
        ({"subject_id": "a", "category": "*"}, "category"),
        ({"subject_id": "a"}, "category"),
        ({"category": "profile"}, "subject_id"),
        ({"subject_id": "", "category": "profile"}, "subject_id"),
        ({"subject_id": "a", "category": "profile", "extra": 1}, "extra"),
        ({"subject_id": 5, "category": "profile"}, "subject_id"),
    ],
)
def test_check_bad_input_is_422_naming_the_field(
    client: TestClient, keys: Keys, body: dict[str, Any], field: str
) -> None:
    assert_problem(check(client, keys, **body), 422, field)


# --- POST /v1/eligibility/batch -----------------------------------------------------------


def test_batch_of_ten_thousand_with_bad_items(
    client: TestClient,
    keys: Keys,
    ledger: ConsentLedger,
    people: dict[str, int],
    verifier: list[VerifierKey],
) -> None:
    assert ledger.settings.batch_max_items == 10_000
    subjects = ["us-default", "fr-granted", "us-denied", "minor", "nobody"]
    items: list[Any] = []
    expected: list[dict[str, Any]] = []
    for position in range(10_000):
        kind = position % 10
        subject = subjects[position % len(subjects)]
        if kind == 3:
            items.append({"id": position, "subject_id": subject, "category": "dms"})
            expected.append({"id": position, "error": "category"})
        elif kind == 5:
            items.append(position)  # not an object: no id to echo
            expected.append({"error": "item"})
        elif kind == 7:
            items.append({"id": f"row-{position}", "category": "profile"})
            expected.append({"id": f"row-{position}", "error": "subject_id"})
        elif kind == 9:
            items.append(
                {"id": position, "subject_id": subject, "category": "profile", "purpose": "x"}
            )
            expected.append({"id": position, "error": "purpose"})
        else:
            item = {"id": position, "subject_id": subject, "category": "profile"}
            if kind == 1:
                item["purpose"] = "ai-inference"
            items.append(item)
            want: dict[str, Any] = {"id": position}
            if position < 50:
                # The batch answers what a single check answers.
                single = check(client, keys, **{k: v for k, v in item.items() if k != "id"})
                answer = single.json()
                want |= {k: answer[k] for k in ("eligible", "reason", "decided_by")}
            expected.append(want)
    started = time.monotonic()
    response = client.post(
        "/v1/eligibility/batch", json={"items": items}, headers=keys.headers("check")
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text[:500]
    assert elapsed < 30
    body = response.json()
    assert HEADER_FIELDS | {"results"} == set(body)
    assert body["checked_at"] == ledger.tree_size()
    assert body["policy_version"] == 1
    assert body["at"].endswith("Z")
    assert open_checkpoint(body["checkpoint"], verifier).size >= body["checked_at"]
    results = body["results"]
    assert len(results) == 10_000
    for position, (result, want) in enumerate(zip(results, expected, strict=True)):
        if "id" in want:
            assert result.get("id") == want["id"], position
        else:
            assert "id" not in result, position
        if "error" in want:
            assert result["error"]["field"] == want["error"], (position, result)
            assert isinstance(result["error"]["message"], str)
            assert "eligible" not in result
        else:
            assert "error" not in result, (position, result)
            assert set(result) == {"id", "eligible", "reason", "decided_by"}
            if "reason" in want:
                assert result == want, position


def test_batch_purpose_as_of_and_at_apply_to_every_item(
    client: TestClient, keys: Keys, people: dict[str, int]
) -> None:
    granted_seq = people["granted"]
    response = client.post(
        "/v1/eligibility/batch",
        json={
            "purpose": "ai-inference",
            "as_of": granted_seq + 1,
            "at": "2030-01-01T00:00:00+00:00",
            "items": [
                {"subject_id": "fr-granted", "category": "profile"},
                {"subject_id": "fr-granted", "category": "profile", "purpose": "ai-training"},
                {"subject_id": "us-denied", "category": "profile", "purpose": "ai-training"},
            ],
        },
        headers=keys.headers("check"),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["checked_at"] == granted_seq + 1
    assert body["at"] == "2030-01-01T00:00:00.000000Z"
    reasons = [result["reason"] for result in body["results"]]
    # us-denied is not registered yet at that tree size.
    assert reasons == ["default-deny", "consent", "unknown-subject"]


def test_batch_over_the_limit_is_413(client: TestClient, keys: Keys) -> None:
    items = [{"subject_id": "a", "category": "profile"}] * 10_001
    response = client.post(
        "/v1/eligibility/batch", json={"items": items}, headers=keys.headers("check")
    )
    assert_problem(response, 413)


def test_batch_limit_is_configurable(ledger: ConsentLedger, keys: Keys) -> None:
    small = ConsentLedger(ledger.settings.model_copy(update={"batch_max_items": 3}))
    try:
        with TestClient(create_app(ledger=small), raise_server_exceptions=False) as client:
            item = {"subject_id": "a", "category": "profile"}
            ok = client.post(
                "/v1/eligibility/batch", json={"items": [item] * 3}, headers=keys.headers()
            )
            assert ok.status_code == 200, ok.text
            assert_problem(
                client.post(
                    "/v1/eligibility/batch", json={"items": [item] * 4}, headers=keys.headers()
                ),
                413,
            )
    finally:
        small.close()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "items"),
        ({"items": {}}, "items"),
        ([], "body"),
        ({"items": [], "as_of": "1"}, "as_of"),
        ({"items": [], "as_of": 10_000}, "as_of"),
        ({"items": [], "at": "soon"}, "at"),
        ({"items": [], "purpose": 5}, "purpose"),
        ({"items": [], "at_least_as_fresh": -1}, "at_least_as_fresh"),
    ],
)
def test_batch_bad_request_is_422(client: TestClient, keys: Keys, body: object, field: str) -> None:
    response = client.post("/v1/eligibility/batch", json=body, headers=keys.headers("check"))
    assert_problem(response, 422, field)


def test_batch_malformed_json_is_422(client: TestClient, keys: Keys) -> None:
    response = client.post(
        "/v1/eligibility/batch",
        content=b'{"items": [',
        headers={**keys.headers("check"), "content-type": "application/json"},
    )
    assert_problem(response, 422, "body")


def test_batch_unknown_top_level_purpose_fails_every_item(client: TestClient, keys: Keys) -> None:
    response = client.post(
        "/v1/eligibility/batch",
        json={"purpose": "marketing", "items": [{"subject_id": "a", "category": "profile"}]},
        headers=keys.headers("check"),
    )
    # Either the whole request is refused naming `purpose`, or each item carries the error.
    if response.status_code == 422:
        assert_problem(response, 422, "purpose")
    else:
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["error"]["field"] == "purpose"


def test_batch_at_least_as_fresh(client: TestClient, keys: Keys, ledger: ConsentLedger) -> None:
    token = register(client, keys, "alice", jurisdiction="US")["token"]
    fresh = client.post(
        "/v1/eligibility/batch",
        json={
            "at_least_as_fresh": token,
            "items": [{"subject_id": "alice", "category": "profile"}],
        },
        headers=keys.headers("check"),
    )
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["results"][0]["reason"] == "default-allow"
    stale = client.post(
        "/v1/eligibility/batch",
        json={"at_least_as_fresh": token + 500, "items": []},
        headers=keys.headers("check"),
    )
    assert_problem(stale, 503)
    assert "Retry-After" in stale.headers


# --- POST /v1/eligibility/stream ----------------------------------------------------------


def _lines(response: Any) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in response.content.splitlines() if line.strip()]


def test_stream_answers_in_order_with_a_header_first(
    client: TestClient,
    keys: Keys,
    ledger: ConsentLedger,
    people: dict[str, int],
    verifier: list[VerifierKey],
) -> None:
    items = [
        b'{"id": 1, "subject_id": "fr-granted", "category": "profile"}',
        b'{"id": 2, "subject_id": "us-denied", "category": "profile"}',
        b"this is not json",
        b'{"id": 4, "subject_id": "fr-granted", "category": "dms"}',
        b"",
        b"[1, 2]",
        b'{"id": "six", "subject_id": "us-default", "category": "profile",'
        b' "purpose": "ai-inference"}',
        b'{"subject_id": "nobody", "category": "profile"}',
    ]
    response = client.post(
        "/v1/eligibility/stream",
        content=b"\n".join(items),  # no final newline: the last line still counts
        headers={**keys.headers("check"), "content-type": "application/x-ndjson"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    header, *results = _lines(response)
    assert set(header) == HEADER_FIELDS
    assert header["checked_at"] == ledger.tree_size()
    assert header["policy_version"] == 1
    assert open_checkpoint(header["checkpoint"], verifier).size >= header["checked_at"]
    assert len(results) == 7  # the blank line is skipped
    assert results[0] == {
        "id": 1,
        "eligible": True,
        "reason": "consent",
        "decided_by": people["granted"],
    }
    assert results[1]["id"] == 2
    assert results[1]["reason"] == "refused"
    assert results[2]["error"]["field"] == "line"
    assert results[3]["id"] == 4
    assert results[3]["error"]["field"] == "category"
    assert results[4]["error"]["field"] == "item"
    assert results[5]["id"] == "six"
    assert results[5]["reason"] == "default-deny"
    assert results[6] == {"eligible": False, "reason": "unknown-subject", "decided_by": None}


def test_stream_query_parameters(client: TestClient, keys: Keys, people: dict[str, int]) -> None:
    as_of = people["granted"] + 1
    response = client.post(
        "/v1/eligibility/stream",
        params={"purpose": "ai-inference", "as_of": as_of, "at": "2030-01-01T00:00:00Z"},
        content=b'{"subject_id": "fr-granted", "category": "profile", "purpose": "ai-training"}\n'
        b'{"subject_id": "fr-granted", "category": "profile"}\n',
        headers=keys.headers("check"),
    )
    assert response.status_code == 200, response.text
    header, first, second = _lines(response)
    assert header["checked_at"] == as_of
    assert header["at"] == "2030-01-01T00:00:00.000000Z"
    assert first["reason"] == "consent"
    assert second["reason"] == "default-deny"


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"as_of": 0}, 422),
        ({"as_of": 10_000}, 422),
        ({"at": "soon"}, 422),
        ({"purpose": "marketing"}, None),
        ({"at_least_as_fresh": 10_000}, 503),
    ],
)
def test_stream_bad_parameters(
    client: TestClient, keys: Keys, params: dict[str, Any], status: int | None
) -> None:
    response = client.post(
        "/v1/eligibility/stream",
        params=params,
        content=b'{"subject_id": "a", "category": "profile"}\n',
        headers=keys.headers("check"),
    )
    if status is None:
        # An unknown stream-wide purpose: refused, or an error on every line.
        if response.status_code == 200:
            assert _lines(response)[1]["error"]["field"] == "purpose"
        else:
            assert_problem(response, 422)
    else:
        assert_problem(response, status)


def test_large_stream_answers_every_line(
    client: TestClient, keys: Keys, people: dict[str, int]
) -> None:
    count = 50_000
    subjects = [b"us-default", b"fr-granted", b"us-denied", b"minor", b"nobody"]

    def body() -> Iterator[bytes]:
        # Lazily generated, in uneven chunks that split lines anywhere.
        pending = b""
        for position in range(count):
            if position % 1000 == 999:
                pending += b"garbage\n"
            else:
                pending += b'{"id":%d,"subject_id":"%s","category":"profile"}\n' % (
                    position,
                    subjects[position % len(subjects)],
                )
            if len(pending) > 7_777:
                yield pending[:7_777]
                pending = pending[7_777:]
        yield pending

    started = time.monotonic()
    response = client.post("/v1/eligibility/stream", content=body(), headers=keys.headers("check"))
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    lines = response.content.splitlines()
    assert len(lines) == count + 1
    assert set(orjson.loads(lines[0])) == HEADER_FIELDS
    for position in (0, 1, 2, 998, 999, 1000, count - 2, count - 1):
        result = orjson.loads(lines[position + 1])
        if position % 1000 == 999:
            assert result["error"]["field"] == "line"
        else:
            assert result["id"] == position
            assert "reason" in result
    errors = sum(1 for line in lines[1:] if line.startswith(b'{"error"'))
    assert errors == count // 1000
    assert elapsed < 60
