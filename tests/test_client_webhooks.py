"""The client's webhook receiver (`WebhookReceiver`) on the ledger's real deliveries, on
SQLite and PostgreSQL: signatures checked with the endpoint's secret, then every event
of every delivery (retries included) verified with the client's trust store, whose
consistency proofs come from the API.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from api.app import create_app
from consent_ledger_client import (
    ConsentLedgerClient,
    WebhookReceiver,
    WebhookSignatureError,
)
from ledger.service import ConsentLedger
from ledger.service.clients import create_client
from ledger.settings import Settings
from tests.conftest import TEST_ORIGIN

# Webhook delivery and its test receiver come with the webhooks branch (issue 14): until
# it is merged beside this one there are no deliveries to receive.
pytest.importorskip("ledger.service.webhook_delivery", reason="webhook delivery not merged yet")
from tests.test_webhooks import caught_up, delivering, fast, write_some  # noqa: E402
from tests.webhook_receiver import Receiver, wait_for  # noqa: E402

BASE = "http://testserver"


@pytest.fixture
def hooks(settings: Settings) -> Iterator[ConsentLedger]:
    """An initialised ledger with fast webhook retries (as in the webhook tests)."""
    instance, _ = ConsentLedger.initialize(fast(settings), origin=TEST_ORIGIN, actor="test")
    yield instance
    instance.close()


@pytest.fixture
def client(hooks: ConsentLedger) -> Iterator[ConsentLedgerClient]:
    """A client of the API whose trust store checks the deliveries' checkpoints."""
    _, key = create_client(hooks.engine, "receiver", ["audit"])
    with (
        TestClient(create_app(ledger=hooks), base_url=BASE) as http,
        ConsentLedgerClient(BASE, key, hooks.verifier_key(), http=http) as client,
    ):
        yield client


def test_every_delivery_verifies_and_dedup_gives_every_event_once(
    hooks: ConsentLedger, client: ConsentLedgerClient
) -> None:
    """A receiver that fails, then recovers: every attempt it got verifies (a retry may
    prove its events into a newer checkpoint), and by `webhook-id` it has each event once."""
    with Receiver(["500", "close", "ok", "500"]) as receiver:
        _, secret = hooks.add_webhook("platform", receiver.url, after=0)
        with delivering(hooks):
            write_some(hooks, "alice", 5)
            hooks.erase_subject("alice", actor="test")
            write_some(hooks, "bob", 4)
            wait_for(lambda: caught_up(hooks, "platform"), what="the deliveries")
        helper = WebhookReceiver(secret, trust=client)
        received = {}
        for attempt in receiver.received():
            delivery = helper.receive(attempt.body, attempt.headers)
            assert delivery.id == attempt.webhook_id
            assert delivery.events, "a delivery of the feed carries events"
            received.setdefault(delivery.id, [e.seq for e in delivery.events])
    assert len(receiver.received()) > len(received), "some deliveries were retried"
    seqs = [seq for batch in received.values() for seq in batch]
    assert seqs == list(range(hooks.tree_size()))
    assert client.trusted_checkpoint is not None
    assert client.trusted_checkpoint.size == hooks.tree_size()


def test_a_filtered_endpoint_s_deliveries_verify_event_by_event(
    hooks: ConsentLedger, client: ConsentLedgerClient
) -> None:
    kinds = ["subject.erased", "consent.recorded"]
    with Receiver() as receiver:
        _, secret = hooks.add_webhook("withdrawals", receiver.url, kinds, after=0)
        with delivering(hooks):
            write_some(hooks, "alice", 4)
            hooks.erase_subject("alice", actor="test")
            wait_for(lambda: caught_up(hooks, "withdrawals"), what="the deliveries")
        helper = WebhookReceiver(secret, trust=hooks.verifier_key())
        events = [
            event
            for request in receiver.deliveries()
            for event in helper.receive(request.body, request.headers).events
        ]
    assert [event.kind for event in events] == ["consent.recorded"] * 3 + ["subject.erased"]
    assert events[-1].subject_id is None
    assert all(event.raw["inclusion"] for event in events)


def test_a_delivery_checked_with_another_endpoint_s_secret_is_refused(
    hooks: ConsentLedger,
) -> None:
    with Receiver() as receiver:
        hooks.add_webhook("platform", receiver.url, after=0)
        _, other = hooks.add_webhook("other", receiver.url + "/other", ["key.added"])
        with delivering(hooks):
            write_some(hooks, "alice", 2)
            wait_for(lambda: caught_up(hooks, "platform"), what="the deliveries")
        request = receiver.deliveries()[0]
        with pytest.raises(WebhookSignatureError, match="No matching signature"):
            WebhookReceiver(other, trust=hooks.verifier_key()).receive(
                request.body, request.headers
            )
