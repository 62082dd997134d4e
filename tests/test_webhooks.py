"""Webhook delivery (SPEC §8), on both engines, against a local receiver that fails in
every way a real one does: in order, batched, signed, at least once, with backoff, one
endpoint never holding up another, one deliverer elected among several.

The deliverer runs in a thread of its own (its own event loop) while the test writes
from this one, as `serve` does beside the writers. Retries are fast (`FAST`); every
wait is bounded generously and asserts on outcomes, not on timings.
"""

from __future__ import annotations

import threading
from base64 import b64decode
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import standardwebhooks
from sqlalchemy import text

from ledger.consent.decisions import DecisionRequest
from ledger.errors import Conflict, InvalidInput, NotFound, SigningKeyError
from ledger.service import ConsentLedger
from ledger.service.webhook_delivery import WebhookDeliverer, retry_delay
from ledger.settings import Settings
from ledger.tlog import merkle
from ledger.tlog.notes import Checkpoint, Note
from tests.conftest import TEST_ORIGIN
from tests.webhook_receiver import Receiver, wait_for

FAST = {
    "webhook_retry_base_seconds": 0.05,
    "webhook_retry_cap_seconds": 0.4,
    "webhook_timeout_seconds": 1.0,
    "webhook_batch_events": 4,
    "webhook_lease_seconds": 2.0,
    "webhook_poll_seconds": 0.1,
}


def fast(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update={**FAST, **changes})


@pytest.fixture
def hooks(settings: Settings) -> Iterator[ConsentLedger]:
    """An initialised ledger with fast webhook retries."""
    instance, _ = ConsentLedger.initialize(fast(settings), origin=TEST_ORIGIN, actor="test")
    yield instance
    instance.close()


@contextmanager
def delivering(ledger: ConsentLedger, holder: str | None = None) -> Iterator[WebhookDeliverer]:
    """Run `ledger`'s webhook deliverer in a thread until the block ends."""
    deliverer = ledger.webhook_deliverer(holder=holder)
    stop = threading.Event()
    failure: list[BaseException] = []

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(deliverer.run)
            while not stop.is_set():
                await anyio.sleep(0.02)
            group.cancel_scope.cancel()

    def run() -> None:
        try:
            anyio.run(main)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield deliverer
    finally:
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the deliverer did not stop"
    if failure:
        raise failure[0]


def write_some(ledger: ConsentLedger, subject: str, count: int) -> None:
    """`count` writes about `subject` (a registration, then decisions)."""
    ledger.register_subject(subject, jurisdiction="US", actor="test")
    decisions = ("granted", "withdrawn", "denied")
    for i in range(count - 1):
        ledger.record_consents(
            subject,
            [DecisionRequest(category="content.public", decision=decisions[i % 3])],
            actor="test",
        )


def attempts(ledger: ConsentLedger, name: str) -> int:
    batch = ledger.webhook(name).batch
    return 0 if batch is None else batch.attempts


def caught_up(ledger: ConsentLedger, name: str) -> bool:
    endpoint = ledger.webhook(name)
    return endpoint.cursor == ledger.tree_size() and endpoint.batch is None


# --- delivery ---------------------------------------------------------------------------


def test_a_failing_receiver_gets_every_event_exactly_once_in_order_once_it_recovers(
    hooks: ConsentLedger,
) -> None:
    script = ["timeout", "500", "slow", "close", "500", "timeout", "close", "slow", "500"]
    with Receiver(script, slow=0.2, hang=2.0) as receiver:
        _, secret = hooks.add_webhook("platform", receiver.url, after=0)
        with delivering(hooks):
            write_some(hooks, "alice", 6)
            hooks.erase_subject("alice", actor="test")
            write_some(hooks, "bob", 5)
            wait_for(lambda: caught_up(hooks, "platform"), what="the receiver to catch up")
        size = hooks.tree_size()
        # Exactly once after de-duplication by webhook-id, in log order.
        assert receiver.event_seqs() == list(range(size))
        requests = receiver.received()
        assert {request.behaviour for request in requests} >= {
            "timeout",
            "500",
            "slow",
            "close",
        }
        # A retry is the same batch under the same id: same events every time.
        by_id: dict[str, list[int]] = {}
        for request in requests:
            assert by_id.setdefault(request.webhook_id, request.seqs()) == request.seqs()
        assert len(requests) > len(by_id), "no delivery was retried"
        receiver.verify_all(secret)
        # At most `webhook_batch_events` events per delivery, ids from the endpoint and seqs.
        for request in receiver.deliveries():
            seqs = request.seqs()
            assert 1 <= len(seqs) <= FAST["webhook_batch_events"]
            assert request.webhook_id == f"platform.{seqs[0]}-{seqs[-1]}"
            document = request.document()
            assert document["type"] == "consent-ledger.changes"
            assert set(document["data"]) >= {"events", "next", "checkpoint", "tree_size"}
            assert document["data"]["next"] == seqs[-1] + 1


def test_a_delivery_is_the_feeds_page_with_its_proof_and_effects(hooks: ConsentLedger) -> None:
    with Receiver() as receiver:
        hooks.add_webhook("platform", receiver.url, after=hooks.tree_size())
        with delivering(hooks):
            write_some(hooks, "alice", 3)
            wait_for(lambda: caught_up(hooks, "platform"), what="the delivery")
        events = []
        for delivery in receiver.deliveries():
            data = delivery.document()["data"]
            # The batch is provable as it came: its events' leaves and range proof give the
            # signed root of the checkpoint it carries.
            checkpoint = Checkpoint.parse_body(Note.parse(data["checkpoint"]).text)
            assert checkpoint.size == data["tree_size"]
            merkle.verify_range(
                data["after"],
                [merkle.leaf_hash(b64decode(event["canonical"])) for event in data["events"]],
                data["tree_size"],
                [b64decode(node) for node in data["proof"]],
                checkpoint.root,
            )
            # And it is the feed's page for the batch.
            page = hooks.changes(data["after"], data["next"] - data["after"]).to_json()
            assert data["events"] == page["events"]
            events += data["events"]
        withdrawal = events[-1]
        assert withdrawal["subject_id"] == "alice"
        assert withdrawal["decision"] == "withdrawn"
        assert {"category": "content.public", "purpose": "ai-training", "eligible": False} in [
            {key: item[key] for key in ("category", "purpose", "eligible")}
            for item in withdrawal["effect"]
        ]


def test_an_endpoint_gets_only_its_kinds_and_its_cursor_passes_the_rest(
    hooks: ConsentLedger,
) -> None:
    with Receiver() as receiver:
        hooks.add_webhook("erasures", receiver.url, ["subject.erased"], after=0)
        with delivering(hooks):
            write_some(hooks, "alice", 9)
            hooks.erase_subject("alice", actor="test")
            write_some(hooks, "bob", 9)
            wait_for(lambda: caught_up(hooks, "erasures"), what="the cursor to pass everything")
        events = [
            e for request in receiver.deliveries() for e in request.document()["data"]["events"]
        ]
        assert [event["kind"] for event in events] == ["subject.erased"]
        # A filtered page's events are not contiguous: each carries its inclusion proof.
        assert events[0]["inclusion"]


def test_a_failing_endpoint_never_delays_a_healthy_one(settings: Settings) -> None:
    # A long time limit: the stuck endpoint holds its request open all along.
    ledger, _ = ConsentLedger.initialize(
        fast(settings, webhook_timeout_seconds=60.0), origin=TEST_ORIGIN, actor="test"
    )
    try:
        with (
            Receiver(then="block") as stuck,
            Receiver(then="500") as failing,
            Receiver() as healthy,
        ):
            ledger.add_webhook("stuck", stuck.url, after=0)
            ledger.add_webhook("failing", failing.url, after=0)
            ledger.add_webhook("healthy", healthy.url, after=0)
            with delivering(ledger):
                write_some(ledger, "alice", 12)
                wait_for(lambda: caught_up(ledger, "healthy"), what="the healthy endpoint")
                assert stuck.blocked.is_set()
                assert ledger.webhook("stuck").cursor == 0
                failing_now = ledger.webhook("failing")
                assert failing_now.cursor == 0
                assert failing_now.batch is not None
                assert failing_now.batch.last_error == "HTTP 500"
                stuck.release()
            assert healthy.event_seqs() == list(range(ledger.tree_size()))
    finally:
        ledger.close()


def _attempts(hooks: ConsentLedger, name: str) -> int:
    batch = hooks.webhook(name).batch
    return 0 if batch is None else batch.attempts


def test_failures_back_off_and_are_listed(hooks: ConsentLedger) -> None:
    with Receiver(then="500") as receiver:
        hooks.add_webhook("platform", receiver.url, after=0)
        with delivering(hooks):
            # Recorded, not just received: the receiver sees an attempt before the
            # deliverer has written down its failure.
            wait_for(lambda: _attempts(hooks, "platform") >= 4, what="four recorded attempts")
        endpoint = hooks.webhook("platform")
        batch = endpoint.batch
        assert batch is not None
        assert batch.attempts >= 4
        assert batch.last_error == "HTTP 500"
        assert batch.first_failure is not None
        assert batch.next_attempt is not None
        listed = hooks.webhooks()[0].to_json()
        assert listed["last_error"] == "HTTP 500"
        assert listed["next_attempt"] == batch.next_attempt
        assert listed["lag"] == hooks.tree_size()
        # The attempts are spaced out: each wait at least the one before (up to the cap).
        times = [request.at for request in receiver.received()]
        gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
        assert gaps[-1] >= FAST["webhook_retry_base_seconds"]


def test_retry_delays_double_from_the_base_up_to_the_cap() -> None:
    assert [retry_delay(n, 1.0, 3600.0) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert retry_delay(13, 1.0, 3600.0) == 3600.0
    assert retry_delay(10_000, 1.0, 3600.0) == 3600.0  # and on at the cap, for ever
    # A day of retries at the default settings is dozens of attempts, never a give-up.
    spent, attempts = 0.0, 0
    while spent < 24 * 3600:
        attempts += 1
        spent += retry_delay(attempts, 1.0, 3600.0)
    assert attempts > 24


def test_a_pending_batch_keeps_its_webhook_id_after_a_restart(
    settings: Settings, hooks: ConsentLedger
) -> None:
    with Receiver(then="500") as receiver:
        hooks.add_webhook("platform", receiver.url, after=0)
        with delivering(hooks):
            wait_for(lambda: len(receiver.received()) >= 2, what="failed attempts")
        first = receiver.received()[0]
        # The log grows while nobody delivers; a new process (the same HOME) takes over.
        write_some(hooks, "alice", 6)
        receiver.script([], then="ok")
        restarted = ConsentLedger(fast(settings))
        try:
            with delivering(restarted):
                wait_for(lambda: caught_up(restarted, "platform"), what="the restart to deliver")
        finally:
            restarted.close()
        ok = [request for request in receiver.received() if request.behaviour == "ok"]
        assert ok[0].webhook_id == first.webhook_id
        assert ok[0].seqs() == first.seqs()
        assert receiver.event_seqs() == list(range(hooks.tree_size()))


def test_a_removed_endpoint_is_sent_nothing_more(hooks: ConsentLedger) -> None:
    with Receiver() as receiver, delivering(hooks):
        hooks.add_webhook("platform", receiver.url, after=0)
        wait_for(lambda: caught_up(hooks, "platform"), what="the first delivery")
        hooks.remove_webhook("platform")
        count = len(receiver.received())
        write_some(hooks, "alice", 3)
        # The deliverer looks at the endpoints every `webhook_poll_seconds`.
        threading.Event().wait(1.0)
        assert len(receiver.received()) == count


# --- signatures and secrets -------------------------------------------------------------


def test_deliveries_verify_with_the_endpoints_secret_and_no_other(
    hooks: ConsentLedger, settings: Settings, tmp_path: Path
) -> None:
    with Receiver() as receiver:
        _, secret = hooks.add_webhook("platform", receiver.url, after=0)
        hooks.add_webhook("other", "https://other.example/hook")
        with delivering(hooks):
            wait_for(lambda: caught_up(hooks, "platform"), what="a delivery")
        request = receiver.received()[0]
        assert standardwebhooks.Webhook(secret).verify(request.body, request.headers)
        other = hooks.webhook_secret("other")
        assert other != secret
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            standardwebhooks.Webhook(other).verify(request.body, request.headers)
        tampered = request.body.replace(b'"seq":0', b'"seq":9')
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            standardwebhooks.Webhook(secret).verify(tampered, request.headers)


def test_the_secret_is_derived_from_home_never_stored(
    hooks: ConsentLedger, settings: Settings, tmp_path: Path
) -> None:
    _, secret = hooks.add_webhook("platform", "https://platform.example/hook")
    assert secret.startswith("whsec_")
    assert hooks.webhook_secret("platform") == secret
    # Another process sharing HOME derives the same; one with another HOME derives another
    # secret and refuses to use it (its deliveries would not verify).
    same_home = ConsentLedger(fast(settings))
    other_home = ConsentLedger(fast(settings).model_copy(update={"home": tmp_path / "elsewhere"}))
    try:
        assert same_home.webhook_secret("platform") == secret
        for call in (other_home.webhook_secret, other_home.test_webhook):
            with pytest.raises(SigningKeyError, match="copy secrets/webhooks.bin"):
                call("platform")
    finally:
        same_home.close()
        other_home.close()
    # Nowhere in the database.
    raw = secret.removeprefix("whsec_")
    with hooks.engine.connect() as connection:
        for table in ("webhook_endpoints", "webhook_batches", "webhook_lease"):
            for row in connection.execute(text(f"SELECT * FROM {table}")):
                assert all(raw not in str(value) for value in row)
    # Removed and added again: a new secret (how a leaked one is replaced).
    hooks.remove_webhook("platform")
    _, again = hooks.add_webhook("platform", "https://platform.example/hook")
    assert again != secret


# --- endpoints: bad input ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "url", "kinds", "after", "message"),
    [
        ("ok", "ftp://x.example/", [], None, "url: must be http:// or https://"),
        ("ok", "https://", [], None, "url: has no host"),
        ("ok", "not a url", [], None, "url: must be an http"),
        ("ok", "http://[::1/", [], None, "url: not a URL"),
        ("ok", "https://x.example/", ["consent.nope"], None, "events: unknown event kind"),
        ("no spaces", "https://x.example/", [], None, "name: must be 1-64 characters"),
        ("ok", "https://x.example/", [], 10**9, "after: must be a tree size"),
        ("ok", "https://x.example/", [], -1, "after: must be a tree size"),
    ],
)
def test_bad_endpoints_are_refused_with_what_is_wrong(
    hooks: ConsentLedger,
    name: str,
    url: str,
    kinds: list[str],
    after: int | None,
    message: str,
) -> None:
    with pytest.raises(InvalidInput, match=message):
        hooks.add_webhook(name, url, kinds, after=after)
    assert hooks.webhooks() == []


def test_names_are_unique_and_unknown_names_are_not_found(hooks: ConsentLedger) -> None:
    hooks.add_webhook("platform", "https://platform.example/hook")
    with pytest.raises(Conflict, match="already exists"):
        hooks.add_webhook("platform", "https://elsewhere.example/hook")
    for call in (hooks.remove_webhook, hooks.webhook, hooks.webhook_secret, hooks.test_webhook):
        with pytest.raises(NotFound, match="no webhook endpoint named 'nobody'"):
            call("nobody")


def test_a_test_delivery_is_signed_and_reports_failures(hooks: ConsentLedger) -> None:
    with Receiver(["ok", "500", "close"]) as receiver:
        _, secret = hooks.add_webhook("platform", receiver.url)
        ok = hooks.test_webhook("platform")
        assert ok.ok
        assert ok.status == 204
        request = receiver.received()[0]
        assert standardwebhooks.Webhook(secret).verify(request.body, request.headers)["type"] == (
            "consent-ledger.test"
        )
        failed = hooks.test_webhook("platform")
        assert (failed.ok, failed.status, failed.error) == (False, 500, "HTTP 500")
        closed = hooks.test_webhook("platform")
        assert not closed.ok
        assert closed.status is None
        assert closed.error
        # A test moves nothing.
        assert hooks.webhook("platform").batch is None


# --- the election -----------------------------------------------------------------------


def test_the_lease_goes_to_one_holder_until_it_expires_or_is_given_up(
    hooks: ConsentLedger, settings: Settings
) -> None:
    other = ConsentLedger(fast(settings))
    store_a, store_b = hooks._webhooks, other._webhooks
    try:
        assert store_a.take_lease("a", 0.3)
        assert not store_b.take_lease("b", 0.3)
        assert store_a.take_lease("a", 0.3), "the holder renews"
        assert store_b.lease_holder() == "a"
        wait_for(lambda: store_b.take_lease("b", 5.0), timeout=10, what="the lease to expire")
        assert not store_a.take_lease("a", 5.0)
        store_a.release_lease("a")  # not a's to give up: nothing happens
        assert store_a.lease_holder() == "b"
        store_b.release_lease("b")
        assert store_a.lease_holder() is None
        assert store_a.take_lease("a", 5.0)
    finally:
        other.close()


def test_one_deliverer_is_elected_among_two_and_the_other_takes_over(
    hooks: ConsentLedger, settings: Settings
) -> None:
    second = ConsentLedger(fast(settings))
    try:
        with Receiver() as receiver:
            hooks.add_webhook("platform", receiver.url, after=0)
            with delivering(hooks, "first") as first:
                with delivering(second, "second") as other:
                    wait_for(lambda: first.leading or other.leading, what="an election")
                    for _ in range(20):
                        assert first.leading != other.leading
                        threading.Event().wait(0.05)
                    write_some(hooks, "alice", 5)
                    wait_for(lambda: caught_up(hooks, "platform"), what="delivery")
                    leader = first if first.leading else other
                    assert hooks._webhooks.lease_holder() == leader.holder
                # Whichever stopped, the other one delivers now.
                wait_for(lambda: first.leading, timeout=20, what="the first to take over")
                write_some(hooks, "bob", 3)
                wait_for(lambda: caught_up(hooks, "platform"), what="delivery after a takeover")
            # Never two deliverers at once: nothing was sent twice.
            assert len(receiver.received()) == len(receiver.deliveries())
            assert receiver.event_seqs() == list(range(hooks.tree_size()))
    finally:
        second.close()


def test_a_deliverer_whose_home_derives_another_secret_sends_nothing(
    hooks: ConsentLedger, settings: Settings, tmp_path: Path
) -> None:
    elsewhere = ConsentLedger(fast(settings).model_copy(update={"home": tmp_path / "elsewhere"}))
    try:
        with Receiver() as receiver:
            hooks.add_webhook("platform", receiver.url, after=0)
            with delivering(elsewhere) as deliverer:
                wait_for(lambda: deliverer.leading, what="the election")
                threading.Event().wait(1.0)
            assert receiver.received() == []
            assert hooks.webhook("platform").cursor == 0
    finally:
        elsewhere.close()
