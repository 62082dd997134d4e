"""Webhook delivery (SPEC §8): the change feed sent to each endpoint in order, in batches,
signed per the Standard Webhooks specification, at least once.

One process delivers for the whole database: the holder of the lease in
`webhook_lease` (`WebhookStore.take_lease`), which every `serve` worker, every API
instance and `consent-ledger webhooks run` contend for; the others wait and take over
within a lease term once it lapses (a crash) or at once when it is given up (a stop).
The holder runs one task per endpoint, each with its own HTTP client and a time limit
on every attempt, so that an endpoint that fails or answers slowly delays no other.

An endpoint's next batch is the first page of the feed after its cursor with an event
of its kinds (a page without one just moves the cursor). Its bounds are stored before
the first attempt, so every attempt carries the same events and `webhook-id`, even
after a restart; the body is read from the log again each time, never stored (it
holds subject ids, which an erasure must be able to remove). The cursor moves past
the batch only once the endpoint answered 2xx. A failed attempt is retried after
`webhook_retry_base_seconds`, then twice as long each time up to
`webhook_retry_cap_seconds`, and then at that interval for as long as it takes: no
event is ever dropped.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from importlib.metadata import version
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.to_thread
import httpx
import orjson
import standardwebhooks

from ledger.errors import LedgerError
from ledger.feed import ChangePage
from ledger.feed.pages import MAX_PAGE
from ledger.service.webhooks import Endpoint, PendingBatch, WebhookStore
from ledger.settings import Settings
from ledger.timestamps import format_timestamp, parse_timestamp, utc_now

logger = logging.getLogger("consent_ledger.webhooks")

CHANGES_TYPE = "consent-ledger.changes"
TEST_TYPE = "consent-ledger.test"
# The longest one wait for the log to grow lasts before it starts again.
IDLE_WAIT = 15.0


class ChangesReader(Protocol):
    """`ConsentLedger.changes`: the feed's page after a cursor."""

    def __call__(
        self, after: int, limit: int = ..., *, kinds: frozenset[str] | None = ...
    ) -> ChangePage: ...


class BatchMismatch(LedgerError):
    """A pending batch's bounds no longer match the feed (never, unless rows were edited)."""


def retry_delay(failures: int, base: float, cap: float) -> float:
    """Seconds to wait after the `failures`-th failure in a row: base, 2·base, 4·base, …,
    never more than `cap`."""
    if failures < 1:
        return 0.0
    return min(cap, base * 2.0 ** min(failures - 1, 64))


def signed_headers(secret: str, message_id: str, moment: datetime, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of `body`, signed with `secret` (`whsec_…`) at
    `moment` (whole seconds: the timestamp header carries no fraction)."""
    signature = standardwebhooks.Webhook(secret).sign(message_id, moment, body)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": f"consent-ledger/{version('consent-ledger')}",
    }


def _now_whole_seconds() -> datetime:
    return datetime.fromtimestamp(int(time.time()), UTC)


def batch_body(batch: PendingBatch, page: ChangePage) -> bytes:
    """The delivery of `batch` read from `page` (a page of the feed from the batch's
    `from_cursor` that reaches its last event): `{"type", "timestamp", "data"}`, data being
    the feed's page restricted to the batch, with `after` its starting cursor."""
    data = page.to_json()
    events = [
        event
        for event in data["events"]
        if batch.from_cursor <= int(event["seq"]) < batch.next_cursor
    ]
    if not events or events[0]["seq"] != batch.first_seq or events[-1]["seq"] != batch.last_seq:
        raise BatchMismatch(
            f"the feed from {batch.from_cursor} to {batch.next_cursor} no longer has the "
            f"batch's events {batch.first_seq}..{batch.last_seq}"
        )
    data["events"] = events
    data["after"] = batch.from_cursor
    if data["next"] != batch.next_cursor:
        # A page that went further than the batch: its range proof covers more than the
        # batch's events (an unfiltered batch always ends where its page does).
        data["next"] = batch.next_cursor
        data["proof"] = []
    return orjson.dumps({"type": CHANGES_TYPE, "timestamp": batch.created, "data": data})


async def post(
    http: httpx.AsyncClient,
    url: str,
    secret: str,
    message_id: str,
    body: bytes,
    timeout: float,
) -> tuple[int | None, str | None]:
    """One signed attempt: (HTTP status, None) on a 2xx answer, else (status or None,
    what went wrong). The whole attempt, answer included, is bounded by `timeout`."""
    headers = signed_headers(secret, message_id, _now_whole_seconds(), body)
    status: int | None = None
    with anyio.move_on_after(timeout) as deadline:
        try:
            # Streamed and never read: only the status counts, and a body that never
            # ends cannot hold the attempt up.
            async with http.stream("POST", url, content=body, headers=headers) as response:
                status = response.status_code
        except httpx.TimeoutException:
            return None, f"timed out after {timeout:g} s"
        except Exception as exc:  # refused, reset, TLS, a URL the client cannot use: failed
            return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if deadline.cancelled_caught:
        return None, f"timed out after {timeout:g} s"
    assert status is not None
    if 200 <= status < 300:
        return status, None
    return status, f"HTTP {status}"


@dataclass(frozen=True, slots=True)
class TestDelivery:
    """What one test delivery to an endpoint got back."""

    endpoint: str
    url: str
    webhook_id: str
    status: int | None
    error: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "url": self.url,
            "webhook_id": self.webhook_id,
            "ok": self.ok,
            "status": self.status,
            "error": self.error,
            "seconds": round(self.seconds, 3),
        }


def send_test(endpoint: Endpoint, secret: str, checkpoint: str, settings: Settings) -> TestDelivery:
    """One signed `consent-ledger.test` delivery to `endpoint`, now; it moves nothing."""
    message_id = f"{endpoint.name}.test-{secrets.token_hex(6)}"
    body = orjson.dumps(
        {
            "type": TEST_TYPE,
            "timestamp": format_timestamp(utc_now()),
            "data": {
                "endpoint": endpoint.name,
                "kinds": sorted(endpoint.kinds),
                "cursor": endpoint.cursor,
                "tree_size": endpoint.tree_size,
                "checkpoint": checkpoint,
            },
        }
    )

    async def attempt() -> tuple[int | None, str | None]:
        async with httpx.AsyncClient(
            follow_redirects=False, timeout=settings.webhook_timeout_seconds
        ) as http:
            return await post(
                http, endpoint.url, secret, message_id, body, settings.webhook_timeout_seconds
            )

    started = time.monotonic()
    status, error = anyio.run(attempt)
    return TestDelivery(
        endpoint.name, endpoint.url, message_id, status, error, time.monotonic() - started
    )


class WebhookDeliverer:
    """Delivers every endpoint's events while this process holds the lease; see the
    module's docstring. `run` goes on until cancelled; `leading` says whether it is the
    elected deliverer now."""

    def __init__(
        self,
        store: WebhookStore,
        changes: ChangesReader,
        wait_beyond: Callable[[int, float], Awaitable[int]],
        secret: Callable[[Endpoint], str],
        settings: Settings,
        *,
        holder: str | None = None,
    ) -> None:
        self._store = store
        self._changes = changes
        self._wait_beyond_head = wait_beyond
        self._secret = secret
        self._settings = settings
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.leading = False

    # --- the election --------------------------------------------------------------------

    async def run(self) -> None:
        """Contend for the lease, deliver while holding it, and give it up when cancelled."""
        term = self._settings.webhook_lease_seconds
        failing: str | None = None
        try:
            while True:
                try:
                    taken = await anyio.to_thread.run_sync(
                        self._store.take_lease, self.holder, term
                    )
                except Exception as exc:  # the database away, a read-only replica
                    if str(exc) != failing:
                        trace = None if isinstance(exc, LedgerError) else exc
                        logger.error("webhook lease: %s", exc, exc_info=trace)
                    failing = str(exc)
                    taken = False
                else:
                    failing = None
                if taken:
                    try:
                        await self._lead()
                    except Exception as exc:  # a bug: never let it take `serve` down
                        logger.error("webhook delivery stopped: %s", exc, exc_info=exc)
                await anyio.sleep(term / 3)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await anyio.to_thread.run_sync(self._store.release_lease, self.holder)
                except Exception as exc:  # it lapses by itself
                    logger.warning("could not give the webhook lease up: %s", exc)

    async def _lead(self) -> None:
        logger.info("delivering webhooks (%s holds the lease)", self.holder)
        self.leading = True
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._keep_lease, group.cancel_scope)
                group.start_soon(self._supervise, group)
        finally:
            self.leading = False

    async def _keep_lease(self, scope: anyio.CancelScope) -> None:
        """Renew the lease every third of its term; stop delivering once it may be lost."""
        term = self._settings.webhook_lease_seconds
        held_until = time.monotonic() + term
        while True:
            await anyio.sleep(term / 3)
            started = time.monotonic()
            try:
                # A renewal stuck past the term (a hung connection, a long write lock) must
                # not let this process deliver beside the one that took the lease over.
                renewed = False
                with anyio.move_on_after(max(held_until - time.monotonic(), 0.0)):
                    renewed = await anyio.to_thread.run_sync(
                        self._store.take_lease, self.holder, term, abandon_on_cancel=True
                    )
            except Exception as exc:
                logger.warning("renewing the webhook lease failed: %s", exc)
                # Another renewal may still come in time; past that, someone may take it.
                if time.monotonic() + term / 3 < held_until:
                    continue
                renewed = False
            if not renewed:
                logger.warning("lost the webhook lease: %s stops delivering", self.holder)
                scope.cancel()
                return
            held_until = started + term

    async def _wait_beyond(self, cursor: int) -> None:
        """Until the log grows past `cursor` (any process's commit), or a while passes.

        `ConsentLedger.wait_beyond` reads the process's shared head, so endpoints waiting
        together cost what one does, and nothing is read while there are none."""
        await self._wait_beyond_head(cursor, IDLE_WAIT)

    async def _supervise(self, group: anyio.abc.TaskGroup) -> None:
        """One task per endpoint: started when it is added, cancelled when it is removed."""
        running: dict[str, anyio.CancelScope] = {}

        async def serve(name: str, scope: anyio.CancelScope) -> None:
            with scope:
                await self._serve_endpoint(name)
            if running.get(name) is scope:
                del running[name]

        while True:
            try:
                names = set(await anyio.to_thread.run_sync(self._store.names))
            except Exception as exc:
                logger.warning("webhooks: listing the endpoints failed: %s", exc)
            else:
                for name in names - running.keys():
                    running[name] = scope = anyio.CancelScope()
                    group.start_soon(serve, name, scope)
                for name in running.keys() - names:
                    running.pop(name).cancel()
            await anyio.sleep(self._settings.webhook_poll_seconds)

    # --- one endpoint --------------------------------------------------------------------

    async def _serve_endpoint(self, name: str) -> None:
        settings = self._settings
        failures = 0
        async with httpx.AsyncClient(
            follow_redirects=False, timeout=settings.webhook_timeout_seconds
        ) as http:
            while True:
                try:
                    if not await self._step(http, name):
                        return
                    failures = 0
                except Exception as exc:  # the database away, or a bug: again, later
                    failures += 1
                    delay = retry_delay(
                        failures,
                        settings.webhook_retry_base_seconds,
                        settings.webhook_retry_cap_seconds,
                    )
                    trace = None if isinstance(exc, LedgerError) else exc
                    logger.error(
                        "webhook endpoint %s: %s; again in %g s", name, exc, delay, exc_info=trace
                    )
                    await anyio.sleep(delay)

    async def _step(self, http: httpx.AsyncClient, name: str) -> bool:
        """Deliver (or attempt) the endpoint's next batch, or wait for one; False once
        the endpoint is gone."""
        endpoint = await anyio.to_thread.run_sync(self._store.find, name)
        if endpoint is None:
            return False
        kinds = endpoint.kinds or None
        batch = endpoint.batch
        body: bytes | None = None
        if batch is None:
            if endpoint.tree_size <= endpoint.cursor:
                await self._wait_beyond(endpoint.cursor)
                return True
            limit = self._settings.webhook_batch_events
            page = await anyio.to_thread.run_sync(
                partial(self._changes, endpoint.cursor, limit, kinds=kinds)
            )
            if not page.events:
                # Nothing of the endpoint's kinds there: the cursor just moves on.
                if page.next > endpoint.cursor:
                    await anyio.to_thread.run_sync(
                        self._store.advance, name, endpoint.cursor, page.next
                    )
                else:
                    await self._wait_beyond(endpoint.cursor)
                return True
            batch = await anyio.to_thread.run_sync(
                self._store.open_batch,
                name,
                endpoint.cursor,
                int(page.events[0]["seq"]),
                int(page.events[-1]["seq"]),
                page.next,
            )
            if batch is None:  # removed, or moved by another deliverer meanwhile
                return True
            if batch.next_cursor == page.next:
                body = batch_body(batch, page)
        elif batch.next_attempt is not None:
            due = (parse_timestamp(batch.next_attempt) - utc_now()).total_seconds()
            if due > 0:
                await anyio.sleep(due)
                return True
        if body is None:
            body = await self._read_batch(batch, kinds)
            if body is None:
                return True
        status, error = await post(
            http,
            endpoint.url,
            self._secret(endpoint),
            batch.webhook_id,
            body,
            self._settings.webhook_timeout_seconds,
        )
        if error is None:
            await anyio.to_thread.run_sync(
                self._store.advance, name, batch.from_cursor, batch.next_cursor
            )
            if batch.attempts:
                logger.info(
                    "webhook %s: %s delivered after %d failed attempts",
                    name,
                    batch.webhook_id,
                    batch.attempts,
                )
            return True
        delay = retry_delay(
            batch.attempts + 1,
            self._settings.webhook_retry_base_seconds,
            self._settings.webhook_retry_cap_seconds,
        )
        await anyio.to_thread.run_sync(
            self._store.record_failure, batch, error, utc_now() + timedelta(seconds=delay)
        )
        logger.warning(
            "webhook %s: %s failed (attempt %d): %s; next attempt in %g s",
            name,
            batch.webhook_id,
            batch.attempts + 1,
            error,
            delay,
        )
        return True

    async def _read_batch(self, batch: PendingBatch, kinds: frozenset[str] | None) -> bytes | None:
        """A pending batch's body, read from the feed again; None (and the batch dropped,
        to be formed afresh) if the feed no longer matches it."""
        # A batch spans at most `webhook_batch_events` entries, so one page holds it.
        limit = max(1, min(batch.next_cursor - batch.from_cursor, MAX_PAGE))
        page = await anyio.to_thread.run_sync(
            partial(self._changes, batch.from_cursor, limit, kinds=kinds)
        )
        try:
            return batch_body(batch, page)
        except BatchMismatch as exc:
            logger.error("webhook %s: %s; forming the batch again", batch.endpoint, exc)
            await anyio.to_thread.run_sync(self._store.drop_batch, batch)
            return None
