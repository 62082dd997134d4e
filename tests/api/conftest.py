"""HTTP API fixtures: the real app (in-process TestClient) over a real database.

Every test here runs on SQLite and on PostgreSQL through `database_url` (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from ledger.service import ConsentLedger
from ledger.service.clients import SCOPES, create_client, revoke_client
from ledger.tlog.notes import VerifierKey
from tests.api.helpers import Keys


@pytest.fixture
def app(ledger: ConsentLedger) -> FastAPI:
    return create_app(ledger=ledger)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    # Server errors come back as the 500 a real client would see, so that
    # "never a 500" is something a test can assert (and mark xfail when it fails).
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def keys(ledger: ConsentLedger) -> Keys:
    made = {scope: create_client(ledger.engine, f"client-{scope}", [scope])[1] for scope in SCOPES}
    _, everything = create_client(ledger.engine, "client-all", list(SCOPES))
    _, revoked = create_client(ledger.engine, "client-revoked", list(SCOPES))
    revoke_client(ledger.engine, "client-revoked")
    return Keys(**made, all=everything, revoked=revoked)


@pytest.fixture
def verifier(ledger: ConsentLedger) -> list[VerifierKey]:
    """The trusted verifier keys (the ledger's current one), for checking bundles offline."""
    return [VerifierKey.parse(ledger.verifier_key())]
