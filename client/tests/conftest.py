"""Fixtures for the client's offline tests: a recorded ledger behind an httpx transport.

These tests need only the client distribution and pytest (`make test-client`
runs them in a virtualenv holding nothing else): no server, no network.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from session import BASE_URL, RecordedLedger

from consent_ledger_client import ConsentLedgerClient

RECORDING = Path(__file__).resolve().parent / "data" / "ledger.json"


@pytest.fixture(scope="session")
def recording() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(RECORDING.read_text(encoding="utf-8"))
    return document


@pytest.fixture
def ledger(recording: dict[str, Any]) -> RecordedLedger:
    return RecordedLedger(recording["exchanges"])


@pytest.fixture
def make_client(
    recording: dict[str, Any], ledger: RecordedLedger
) -> Callable[..., ConsentLedgerClient]:
    def make(**options: Any) -> ConsentLedgerClient:
        options.setdefault("verifier_key", recording["verifier_key"])
        return ConsentLedgerClient(BASE_URL, "recorded-api-key", transport=ledger, **options)

    return make


@pytest.fixture
def answer(recording: dict[str, Any]) -> Callable[[str], Any]:
    """The recorded JSON answer to the request whose key starts with `prefix`."""

    def find(prefix: str) -> Any:
        (body,) = [v["body"] for k, v in recording["exchanges"].items() if k.startswith(prefix)]
        return json.loads(body)

    return find
