"""Health, readiness, metrics, and the problem+json shape of routing errors."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from ledger.service import ConsentLedger
from ledger.settings import Settings
from tests.api.helpers import Keys, assert_problem, register


def test_healthz_needs_no_key(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok"}


def test_readyz_needs_no_key_and_is_ready(client: TestClient, ledger: ConsentLedger) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready", "tree_size": ledger.tree_size()}


def test_readyz_without_a_ledger_is_503(tmp_path: Path) -> None:
    empty = ConsentLedger(
        Settings(home=tmp_path / "nohome", database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    )
    try:
        with TestClient(create_app(ledger=empty), raise_server_exceptions=False) as client:
            assert client.get("/healthz").status_code == 200
            assert_problem(client.get("/readyz"), 503)
    finally:
        empty.close()


def test_metrics_need_the_audit_scope(client: TestClient, keys: Keys) -> None:
    register(client, keys, "alice")
    client.get("/v1/subjects/alice/consents", headers=keys.headers("read"))
    assert_problem(client.get("/metrics"), 401)
    assert_problem(client.get("/metrics", headers=keys.headers("check")), 403)
    response = client.get("/metrics", headers=keys.headers("audit"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert "consent_ledger_http_requests" in response.text
    assert "consent_ledger_http_request_seconds" in response.text
    samples = {
        (sample.labels.get("method"), sample.labels.get("route"), sample.labels.get("status"))
        for family in text_string_to_metric_families(response.text)
        if family.name == "consent_ledger_http_requests"
        for sample in family.samples
        if sample.name == "consent_ledger_http_requests_total"
    }
    # Routes are labelled by template, never by the subject id in the URL.
    assert ("PUT", "/v1/subjects/{subject_id}", "201") in samples
    assert ("GET", "/v1/subjects/{subject_id}/consents", "200") in samples
    assert ("GET", "/metrics", "401") in samples
    assert "alice" not in response.text


def test_routing_errors_are_problems(client: TestClient, keys: Keys) -> None:
    assert_problem(client.get("/no/such/path", headers=keys.headers()), 404)
    assert_problem(client.delete("/healthz"), 405)
    assert_problem(client.post("/v1/policy", json={}, headers=keys.headers()), 405)


def test_openapi_and_docs_are_served(client: TestClient) -> None:
    schema = client.get("/openapi.json")
    assert schema.status_code == 200
    assert "/v1/eligibility/check" in schema.json()["paths"]
    assert client.get("/docs").status_code == 200
