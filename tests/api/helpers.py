"""Helpers shared by the API tests: auth headers, keys, writes and problem+json assertions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from fastapi.testclient import TestClient

PROBLEM_JSON = "application/problem+json"


def auth(key: str) -> dict[str, str]:
    """The Authorization header for an API key."""
    return {"Authorization": f"Bearer {key}"}


@dataclass(frozen=True)
class Keys:
    """Bearer keys: one client per scope, one holding every scope, one revoked."""

    check: str
    record: str
    read: str
    audit: str
    feed: str
    admin: str
    all: str
    revoked: str

    def scope(self, name: str) -> str:
        return str(getattr(self, name))

    def headers(self, name: str = "all") -> dict[str, str]:
        return auth(self.scope(name))


def assert_problem(
    response: httpx.Response, status: int, field: str | None = None
) -> dict[str, Any]:
    """`response` is an RFC 9457 problem with `status`, naming `field` if given."""
    assert response.status_code == status, response.text
    content_type = response.headers["content-type"]
    assert content_type.split(";")[0].strip() == PROBLEM_JSON, content_type
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert isinstance(body["detail"], str)
    if field is not None:
        fields = [error["field"] for error in body.get("errors", [])]
        assert field in fields, body
    return body


def register(
    client: TestClient,
    keys: Keys,
    subject_id: str,
    *,
    jurisdiction: str | None = None,
    minor: bool = False,
) -> dict[str, Any]:
    response = client.put(
        f"/v1/subjects/{subject_id}",
        json={"jurisdiction": jurisdiction, "minor": minor},
        headers=keys.headers("record"),
    )
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


def record(
    client: TestClient, keys: Keys, subject_id: str, *decisions: dict[str, Any]
) -> dict[str, Any]:
    response = client.post(
        f"/v1/subjects/{subject_id}/consents",
        json={"decisions": list(decisions)},
        headers=keys.headers("record"),
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def check(client: TestClient, keys: Keys, **body: Any) -> httpx.Response:
    return client.post("/v1/eligibility/check", json=body, headers=keys.headers("check"))
