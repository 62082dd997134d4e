"""The policy over HTTP: reading it, publishing JSON and TOML versions, refusing bad ones."""

from __future__ import annotations

import asyncio
import base64
import copy
from importlib import resources
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ledger.consent.policy import default_policy
from ledger.service import ConsentLedger
from ledger.tlog.canonical import parse_canonical
from tests.api.helpers import Keys, assert_problem, check, register


def current(client: TestClient, keys: Keys) -> dict[str, Any]:
    response = client.get("/v1/policy", headers=keys.headers("read"))
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def version_2(document: dict[str, Any]) -> dict[str, Any]:
    """The document as version 2, which also allows `location` by default outside GDPR."""
    updated = copy.deepcopy(document)
    updated["version"] = 2
    updated["defaults"]["default"]["ai-training"]["location"] = "allow"
    return updated


def test_publishing_runs_in_the_thread_pool_never_on_the_event_loop(
    client: TestClient, keys: Keys, ledger: ConsentLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A publish waits for the write lock and a commit; on the event loop it would
    # hold up every other request meanwhile (issue #12, point 7).
    publish = ledger.publish_policy
    where: list[str] = []

    def publish_noting_where(*args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            where.append("event loop")
        except RuntimeError:
            where.append("worker thread")
        return publish(*args, **kwargs)

    monkeypatch.setattr(ledger, "publish_policy", publish_noting_where)
    document = version_2(current(client, keys))

    response = client.put("/v1/policy", json=document, headers=keys.headers("admin"))

    assert response.status_code == 201, response.text
    assert where == ["worker thread"]


def test_get_policy_returns_the_document_in_force(client: TestClient, keys: Keys) -> None:
    document = current(client, keys)
    assert document == default_policy().to_document()
    assert document["version"] == 1
    assert "content.private.messages" in document["categories"]
    assert "ai-training.generative" in document["purposes"]
    assert "GB" in document["regimes"]["gdpr"]
    assert document["prohibited"] == [{"category": "content.private", "purpose": "*"}]


def test_put_json_policy_publishes_a_new_version(
    client: TestClient, keys: Keys, ledger: ConsentLedger
) -> None:
    before = register(client, keys, "alice", jurisdiction="US")["token"]
    old = check(client, keys, subject_id="alice", category="location").json()
    assert (old["reason"], old["policy_version"]) == ("default-deny", 1)

    response = client.put(
        "/v1/policy", json=version_2(current(client, keys)), headers=keys.headers("admin")
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["version"] == 2
    assert body["token"] == ledger.tree_size()
    assert body["entry"] == body["token"] - 1

    new = check(client, keys, subject_id="alice", category="location").json()
    assert (new["eligible"], new["reason"], new["policy_version"]) == (True, "default-allow", 2)
    # Answers as of an earlier tree size use the policy in force then.
    then = check(client, keys, subject_id="alice", category="location", as_of=before).json()
    assert (then["reason"], then["policy_version"]) == ("default-deny", 1)
    assert current(client, keys)["version"] == 2

    entry = client.get(f"/v1/ledger/entries/{body['entry']}", headers=keys.headers("audit"))
    published = parse_canonical(base64.b64decode(entry.json()["canonical"]))
    assert published["kind"] == "policy.published"
    assert published["actor"] == "client-admin"
    assert published["data"]["version"] == 2
    assert published["data"]["policy"] == current(client, keys)


@pytest.mark.parametrize("content_type", ["application/toml", "application/toml; charset=utf-8"])
def test_put_toml_policy(
    client: TestClient, keys: Keys, ledger: ConsentLedger, content_type: str
) -> None:
    text = resources.files("ledger.consent.policies").joinpath("default.toml").read_text("utf-8")
    assert "\nversion = 1\n" in text
    text = text.replace("\nversion = 1\n", "\nversion = 7\n")
    response = client.put(
        "/v1/policy",
        content=text.encode(),
        headers={**keys.headers("admin"), "content-type": content_type},
    )
    assert response.status_code == 201, response.text
    assert response.json()["version"] == 7
    register(client, keys, "alice")
    assert check(client, keys, subject_id="alice", category="profile").json()["policy_version"] == 7
    assert current(client, keys)["version"] == 7


def _without(document: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k != key}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: {**d, "version": "2"}, "version"),
        (lambda d: {**d, "version": 0}, "version"),
        (lambda d: {**d, "version": 2, "minors_eligible": "no"}, "minors_eligible"),
        (lambda d: {**d, "version": 2, "special": ["nope"]}, "special[0]"),
        (
            lambda d: {**d, "version": 2, "prohibited": [{"category": "dms", "purpose": "*"}]},
            "prohibited[0].category",
        ),
        (lambda d: _without({**d, "version": 2}, "categories"), "categories"),
        (lambda d: {**d, "version": 2, "colour": "red"}, None),
        (lambda d: {**d, "version": 2, "regimes": {"gdpr": ["ZZ"]}}, None),
        (
            lambda d: {**d, "version": 2, "defaults": {"default": {"ai-training": {"x": "allow"}}}},
            None,
        ),
    ],
)
def test_invalid_policy_is_422_naming_the_field(
    client: TestClient, keys: Keys, ledger: ConsentLedger, change: Any, field: str | None
) -> None:
    size = ledger.tree_size()
    document = change(current(client, keys))
    response = client.put("/v1/policy", json=document, headers=keys.headers("admin"))
    body = assert_problem(response, 422, field)
    assert body.get("errors"), body  # the offending field is always named
    assert ledger.tree_size() == size


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"[1, 2]", "application/json"),
        (b"{not json", "application/json"),
        (b"version = ", "application/toml"),
        (b"\xff\xfe", "application/toml"),
        (b"", "application/json"),
    ],
)
def test_malformed_policy_body_is_422(
    client: TestClient, keys: Keys, ledger: ConsentLedger, content: bytes, content_type: str
) -> None:
    size = ledger.tree_size()
    response = client.put(
        "/v1/policy",
        content=content,
        headers={**keys.headers("admin"), "content-type": content_type},
    )
    assert_problem(response, 422)
    assert ledger.tree_size() == size


def test_same_or_older_version_is_409(
    client: TestClient, keys: Keys, ledger: ConsentLedger
) -> None:
    document = version_2(current(client, keys))
    assert client.put("/v1/policy", json=document, headers=keys.headers()).status_code == 201
    size = ledger.tree_size()
    assert_problem(client.put("/v1/policy", json=document, headers=keys.headers()), 409)
    assert_problem(
        client.put("/v1/policy", json={**document, "version": 1}, headers=keys.headers()), 409
    )
    assert ledger.tree_size() == size
    assert current(client, keys)["version"] == 2


def test_policy_version_beyond_json_safe_integers_names_the_field(
    client: TestClient, keys: Keys
) -> None:
    document = {**current(client, keys), "version": 2**53 + 1}
    assert_problem(client.put("/v1/policy", json=document, headers=keys.headers()), 422, "version")
