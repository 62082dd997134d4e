"""Receiving webhooks (SPEC §8): Standard Webhooks signatures, then the events' proofs.

Deliveries are made here from the recorded pages of `data/changes.json` (the body
the ledger sends is ``{"type": "consent-ledger.changes", "data": PAGE}``), and
signed now with `standardwebhooks` itself, since a signature's timestamp must be
within five minutes of the receiver's clock.
"""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from standardwebhooks import Webhook

from consent_ledger_client import (
    ConsentLedgerClient,
    ProtocolError,
    VerificationError,
    WebhookReceiver,
    WebhookSignatureError,
)

RECORDED: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parent / "data" / "changes.json").read_text(encoding="utf-8")
)
KEY = RECORDED["verifier_key"]
SECRET = "whsec_" + base64.b64encode(b"an endpoint's signing secret, 32b").decode()
MESSAGE_ID = "msg_posts-train-endpoint_4_7"


def delivery(
    data: dict[str, Any] | None = None,
    *,
    kind: str = "consent-ledger.changes",
    secret: str = SECRET,
    at: datetime | None = None,
    message_id: str = MESSAGE_ID,
) -> tuple[bytes, dict[str, str]]:
    """A body and its headers, as the ledger sends a delivery."""
    if data is None:
        data = copy.deepcopy(RECORDED["pages"]["4/2"])
    body = orjson.dumps({"type": kind, "data": data})
    at = at or datetime.now(UTC)
    headers = {
        "Webhook-Id": message_id,
        "Webhook-Timestamp": str(int(at.timestamp())),
        "Webhook-Signature": Webhook(secret).sign(message_id, at, body),
        "Content-Type": "application/json",
    }
    return body, headers


def test_a_signed_delivery_is_received_and_its_events_verified() -> None:
    body, headers = delivery()
    received = WebhookReceiver(SECRET, trust=KEY).receive(body, headers)
    assert received.id == MESSAGE_ID
    assert received.type == "consent-ledger.changes"
    assert [event.seq for event in received.events] == [4, 5]
    assert received.next == 6
    assert received.checkpoint is not None
    assert received.checkpoint.size == RECORDED["tree_size"]


def test_a_delivery_states_where_its_events_start() -> None:
    data = copy.deepcopy(RECORDED["pages"]["4/2"])
    data["after"] = 4
    body, headers = delivery(data)
    assert [e.seq for e in WebhookReceiver(SECRET, trust=KEY).receive(body, headers).events] == [
        4,
        5,
    ]
    data["after"] = 3
    body, headers = delivery(data)
    with pytest.raises(VerificationError, match=r"every entry in \[3, 6\)"):
        WebhookReceiver(SECRET, trust=KEY).receive(body, headers)


def test_a_filtered_delivery_is_verified_event_by_event() -> None:
    body, headers = delivery(copy.deepcopy(RECORDED["filtered"]["page"]))
    received = WebhookReceiver(SECRET, trust=[KEY]).receive(body.decode(), headers)
    assert received.events
    assert {event.kind for event in received.events} <= set(RECORDED["filtered"]["kinds"])


def test_without_trust_only_the_signature_is_checked() -> None:
    data = copy.deepcopy(RECORDED["pages"]["4/2"])
    data["events"][0]["canonical"] = "AAAA"
    body, headers = delivery(data)
    received = WebhookReceiver(SECRET).receive(body, headers)
    assert received.events == ()
    assert received.data["events"][0]["canonical"] == "AAAA"


def test_a_client_verifies_deliveries_against_its_trust_store(tmp_path: Path) -> None:
    store = tmp_path / "ledger.checkpoint"
    with ConsentLedgerClient("http://ledger.test", "key", KEY, trust_store=store) as client:
        body, headers = delivery()
        received = WebhookReceiver(SECRET, trust=client).receive(body, headers)
    assert received.checkpoint == client.trusted_checkpoint
    assert store.exists()


def _resign(headers: dict[str, str], body: bytes) -> None:
    headers["Webhook-Signature"] = "v1," + base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("body", "No matching signature"),
        ("secret", "No matching signature"),
        ("id", "No matching signature"),
        ("old", "too old"),
        ("future", "too new"),
        ("missing", "Missing required headers"),
        ("forged", "No matching signature"),
    ],
)
def test_a_bad_signature_is_refused(change: str, message: str) -> None:
    at = datetime.now(UTC)
    if change == "old":
        at -= timedelta(minutes=6)
    elif change == "future":
        at += timedelta(minutes=6)
    secret = "whsec_" + base64.b64encode(b"someone else's secret").decode()
    body, headers = delivery(at=at, secret=secret if change == "secret" else SECRET)
    if change == "body":
        body = body.replace(b'"next":6', b'"next":7')
    elif change == "id":
        headers["Webhook-Id"] = "msg_other"
    elif change == "missing":
        del headers["Webhook-Signature"]
    elif change == "forged":
        _resign(headers, body)
    with pytest.raises(WebhookSignatureError, match=message):
        WebhookReceiver(SECRET, trust=KEY).receive(body, headers)


def test_a_signed_delivery_of_tampered_events_is_refused() -> None:
    """Whoever holds the secret can sign anything: the events must still be the log's."""
    data = copy.deepcopy(RECORDED["pages"]["4/2"])
    data["events"][1]["seq"] = 4
    body, headers = delivery(data)
    with pytest.raises(VerificationError, match="shows seq 4") as raised:
        WebhookReceiver(SECRET, trust=KEY).receive(body, headers)
    assert not isinstance(raised.value, WebhookSignatureError)


def test_a_delivery_of_another_type_carries_no_events() -> None:
    body, headers = delivery({"message": "hello"}, kind="consent-ledger.test")
    received = WebhookReceiver(SECRET, trust=KEY).receive(body, headers)
    assert received.type == "consent-ledger.test"
    assert received.events == ()
    assert received.next is None


@pytest.mark.parametrize("body", [b"[]", b"not json", b'{"type": 1}'])
def test_a_signed_body_that_is_not_a_delivery_is_a_protocol_error(body: bytes) -> None:
    at = datetime.now(UTC)
    headers = {
        "webhook-id": MESSAGE_ID,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(SECRET).sign(MESSAGE_ID, at, body),
    }
    with pytest.raises(ProtocolError):
        WebhookReceiver(SECRET).receive(body, headers)
