"""Request body limits: 413 over `settings.max_body_bytes`, except on the NDJSON stream."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from ledger.service import ConsentLedger
from tests.api.helpers import Keys, assert_problem

LIMIT = 2048


@pytest.fixture
def small(ledger: ConsentLedger) -> Iterator[TestClient]:
    """The app over the same database, with a 2 KiB body limit."""
    limited = ConsentLedger(ledger.settings.model_copy(update={"max_body_bytes": LIMIT}))
    try:
        with TestClient(create_app(ledger=limited), raise_server_exceptions=False) as client:
            yield client
    finally:
        limited.close()


def chunks(total: int, prefix: bytes = b'{"items": [') -> Iterator[bytes]:
    """A body without a Content-Length (chunked), `total` bytes long."""
    yield prefix
    sent = len(prefix)
    while sent < total:
        piece = b'{"subject_id": "a", "category": "profile"},'
        yield piece
        sent += len(piece)


def test_declared_oversize_bodies_are_413(
    small: TestClient, keys: Keys, ledger: ConsentLedger
) -> None:
    size = ledger.tree_size()
    notice = "n" * (LIMIT + 10)
    assert_problem(
        small.put("/v1/subjects/alice", json={"jurisdiction": notice}, headers=keys.headers()),
        413,
    )
    small.put("/v1/subjects/alice", json={}, headers=keys.headers())
    size = ledger.tree_size()
    assert_problem(
        small.post(
            "/v1/subjects/alice/consents",
            json={"decisions": [{"category": "profile", "decision": "granted", "notice": notice}]},
            headers=keys.headers(),
        ),
        413,
    )
    items = [{"subject_id": "a", "category": "profile"}] * 100
    assert_problem(
        small.post("/v1/eligibility/batch", json={"items": items}, headers=keys.headers()), 413
    )
    assert_problem(
        small.post(
            "/v1/eligibility/check",
            json={"subject_id": "a", "category": "profile", "at": notice},
            headers=keys.headers(),
        ),
        413,
    )
    assert_problem(small.put("/v1/policy", content=b"x" * (LIMIT + 1), headers=keys.headers()), 413)
    assert ledger.tree_size() == size


def test_bodies_under_the_limit_pass(small: TestClient, keys: Keys) -> None:
    items = [{"subject_id": "a", "category": "profile"}] * 20
    response = small.post("/v1/eligibility/batch", json={"items": items}, headers=keys.headers())
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 20


@pytest.mark.parametrize(
    ("method", "url"), [("POST", "/v1/eligibility/batch"), ("PUT", "/v1/policy")]
)
def test_undeclared_oversize_body_is_413_for_raw_routes(
    small: TestClient, keys: Keys, ledger: ConsentLedger, method: str, url: str
) -> None:
    size = ledger.tree_size()
    response = small.request(
        method,
        url,
        content=chunks(LIMIT * 4),
        headers={**keys.headers(), "content-type": "application/json"},
    )
    assert_problem(response, 413)
    assert ledger.tree_size() == size


@pytest.mark.parametrize(
    ("method", "url", "prefix"),
    [
        ("POST", "/v1/eligibility/check", b'{"subject_id": "a", "category": "profile", "x": ['),
        ("PUT", "/v1/subjects/alice", b'{"jurisdiction": null, "x": ['),
    ],
)
def test_undeclared_oversize_body_is_413_for_model_routes(
    small: TestClient, keys: Keys, method: str, url: str, prefix: bytes
) -> None:
    response = small.request(
        method,
        url,
        content=chunks(LIMIT * 4, prefix),
        headers={**keys.headers(), "content-type": "application/json"},
    )
    assert_problem(response, 413)


def test_the_stream_has_no_body_limit(small: TestClient, keys: Keys) -> None:
    line = b'{"subject_id": "a", "category": "profile"}\n'
    count = (LIMIT * 10) // len(line)
    response = small.post("/v1/eligibility/stream", content=line * count, headers=keys.headers())
    assert response.status_code == 200, response.text
    assert len(response.content.splitlines()) == count + 1
