"""Every operation in the OpenAPI document × every kind of caller: who gets in, who does not.

The table below is the contract (SPEC §4). A route added without an entry here fails
`test_matrix_covers_every_operation`, so no endpoint can ship without a decided scope.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from ledger.service.clients import SCOPES
from tests.api.helpers import Keys, assert_problem, auth, register

# (method, path) -> the one scope that admits a caller, or None for no authentication.
EXPECTED: dict[tuple[str, str], str | None] = {
    ("GET", "/healthz"): None,
    ("GET", "/readyz"): None,
    ("GET", "/metrics"): "audit",
    ("PUT", "/v1/subjects/{subject_id}"): "record",
    ("POST", "/v1/subjects/{subject_id}/consents"): "record",
    ("GET", "/v1/subjects/{subject_id}/consents"): "read",
    ("GET", "/v1/subjects/{subject_id}/history"): "read",
    ("DELETE", "/v1/subjects/{subject_id}"): "admin",
    ("GET", "/v1/subjects/{subject_id}/datasets"): "read",
    ("POST", "/v1/eligibility/check"): "check",
    ("POST", "/v1/eligibility/batch"): "check",
    ("POST", "/v1/eligibility/stream"): "check",
    ("POST", "/v1/datasets/{name}/versions/{version}"): "record",
    ("GET", "/v1/datasets"): "read",
    ("GET", "/v1/datasets/{name}"): "read",
    ("GET", "/v1/datasets/{name}/versions/{version}"): "read",
    ("DELETE", "/v1/datasets/{name}/versions/{version}"): "admin",
    ("GET", "/v1/datasets/{name}/versions/{version}/members/{record_id}/proof"): "read",
    ("GET", "/v1/datasets/{name}/obligations"): "read",
    ("POST", "/v1/datasets/{name}/versions/{version}/purges"): "record",
    ("GET", "/v1/changes"): "feed",
    ("GET", "/v1/ledger/checkpoint"): "audit",
    ("GET", "/v1/ledger/entries"): "audit",
    ("GET", "/v1/ledger/entries/{seq}"): "audit",
    ("GET", "/v1/ledger/proofs/inclusion"): "audit",
    ("GET", "/v1/ledger/proofs/consistency"): "audit",
    ("GET", "/tlog/checkpoint"): "audit",
    ("GET", "/tlog/tile/{path}"): "audit",
    ("GET", "/v1/policy"): "read",
    ("PUT", "/v1/policy"): "admin",
    ("GET", "/v1/reports/subject/{subject_id}"): "audit",
    ("GET", "/v1/reports/period"): "audit",
}

SUBJECT = "matrix-subject"
PATH_VALUES = {
    "subject_id": SUBJECT,
    "seq": "0",
    "path": "0/000.p/1",
    "name": "matrix-dataset",
    "version": "1",
    "record_id": "matrix-record",
}
QUERY_VALUES: dict[str, Any] = {"index": 0, "tree_size": 2, "old_size": 1, "new_size": 2}
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("PUT", "/v1/subjects/{subject_id}"): {"json": {"jurisdiction": "US"}},
    ("POST", "/v1/subjects/{subject_id}/consents"): {
        "json": {"decisions": [{"category": "profile", "decision": "granted"}]}
    },
    ("POST", "/v1/eligibility/check"): {"json": {"subject_id": SUBJECT, "category": "profile"}},
    ("POST", "/v1/eligibility/batch"): {
        "json": {"items": [{"subject_id": SUBJECT, "category": "profile"}]}
    },
    ("POST", "/v1/eligibility/stream"): {
        "content": b'{"subject_id": "matrix-subject", "category": "profile"}\n',
        "headers": {"content-type": "application/x-ndjson"},
    },
    ("PUT", "/v1/policy"): {"json": {"version": 1}},
    ("POST", "/v1/datasets/{name}/versions/{version}"): {
        "content": b'{"record_id": "matrix-record", "subject_id": "matrix-subject",'
        b' "category": "profile"}\n',
        "headers": {"content-type": "application/x-ndjson"},
    },
    ("POST", "/v1/datasets/{name}/versions/{version}/purges"): {
        "json": {"record_ids": ["matrix-record"]}
    },
}
# Authorization headers that identify no active client.
MALFORMED = [
    "Bearer",
    "Bearer ",
    "Bearer not-a-key",
    "Bearer clk_0123456789abcdef_" + "A" * 43,  # well-formed, unknown
    "Basic dXNlcjpwYXNzd29yZA==",
    "clk_0123456789abcdef_" + "A" * 43,  # no scheme
]

Operation = tuple[str, str, dict[str, Any]]


def operations(app: FastAPI) -> list[Operation]:
    out = []
    for path, methods in app.openapi()["paths"].items():
        for method, spec in methods.items():
            out.append((method.upper(), path, spec))
    return out


def call(
    client: TestClient, method: str, path: str, spec: dict[str, Any], headers: dict[str, str]
) -> httpx.Response:
    url = path.format(**{name: value for name, value in PATH_VALUES.items() if name in path})
    params = {
        parameter["name"]: QUERY_VALUES[parameter["name"]]
        for parameter in spec.get("parameters", [])
        if parameter["in"] == "query" and parameter.get("required")
    }
    extra = dict(BODIES.get((method, path), {}))
    merged = {**extra.pop("headers", {}), **headers}
    return client.request(method, url, params=params, headers=merged, **extra)


def test_matrix_covers_every_operation(app: FastAPI) -> None:
    documented = {(method, path) for method, path, _ in operations(app)}
    assert documented == set(EXPECTED), (
        f"operations without an expected scope: {sorted(documented - set(EXPECTED))}; "
        f"expected operations that are gone: {sorted(set(EXPECTED) - documented)}"
    )


def test_openapi_declares_bearer_security_where_a_key_is_needed(app: FastAPI) -> None:
    for method, path, spec in operations(app):
        if EXPECTED.get((method, path)) is None:
            assert not spec.get("security"), (method, path)
        else:
            assert spec.get("security") == [{"HTTPBearer": []}], (method, path)


def test_auth_matrix(client: TestClient, app: FastAPI, keys: Keys) -> None:
    register(client, keys, SUBJECT, jurisdiction="US")
    failures: list[str] = []

    def expect(label: str, response: httpx.Response, wanted: set[int] | None, barred: bool) -> None:
        status = response.status_code
        if wanted is not None and status not in wanted:
            failures.append(f"{label}: {status}, wanted {sorted(wanted)}: {response.text[:200]}")
        if barred and status in (401, 403):
            failures.append(f"{label}: {status}, wanted access: {response.text[:200]}")
        if status in (401, 403):
            try:
                assert_problem(response, status)
            except AssertionError as exc:
                failures.append(f"{label}: not problem+json: {exc}")
        if status == 401 and "bearer" not in response.headers.get("www-authenticate", "").lower():
            failures.append(f"{label}: 401 without WWW-Authenticate: Bearer")
        if status >= 500:
            failures.append(f"{label}: server error {status}: {response.text[:200]}")

    for method, path, spec in operations(app):
        scope = EXPECTED.get((method, path), "<missing>")
        name = f"{method} {path}"
        if scope is None:
            expect(f"{name} without a key", call(client, method, path, spec, {}), None, True)
            for header in MALFORMED:
                response = call(client, method, path, spec, {"Authorization": header})
                expect(f"{name} with {header!r}", response, None, True)
            continue
        expect(f"{name} without a key", call(client, method, path, spec, {}), {401}, False)
        for header in MALFORMED:
            response = call(client, method, path, spec, {"Authorization": header})
            expect(f"{name} with {header!r}", response, {401}, False)
        revoked = call(client, method, path, spec, auth(keys.revoked))
        expect(f"{name} with a revoked key", revoked, {401}, False)
        for other in SCOPES:
            if other != scope:
                response = call(client, method, path, spec, keys.headers(other))
                expect(f"{name} with scope {other}", response, {403}, False)
        if scope in SCOPES:
            right = call(client, method, path, spec, keys.headers(scope))
            expect(f"{name} with scope {scope}", right, None, True)
        every = call(client, method, path, spec, keys.headers("all"))
        expect(f"{name} with every scope", every, None, True)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_bearer_scheme_is_case_insensitive(client: TestClient, keys: Keys, scheme: str) -> None:
    response = client.get("/v1/policy", headers={"Authorization": f"{scheme} {keys.read}"})
    assert response.status_code == 200, response.text


def test_a_key_stops_working_when_revoked(client: TestClient, keys: Keys, ledger: Any) -> None:
    from ledger.service.clients import create_client, revoke_client

    _, key = create_client(ledger.engine, "short-lived", ["read"])
    assert client.get("/v1/policy", headers=auth(key)).status_code == 200
    revoke_client(ledger.engine, "short-lived")
    assert_problem(client.get("/v1/policy", headers=auth(key)), 401)
