"""The FastAPI application: routers, error handling, limits and metrics.

Routes are thin: each validates its input and calls one `ConsentLedger` method.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import problems
from api.routes import (
    changes,
    datasets,
    eligibility,
    health,
    log,
    policy,
    reports,
    subjects,
    tlog,
)
from ledger.errors import LedgerError
from ledger.service import ConsentLedger
from ledger.settings import Settings

logger = logging.getLogger("consent_ledger.api")

# The stream endpoints take unbounded bodies by design (constant memory): the
# eligibility stream, and a dataset build (POST on a version).
UNLIMITED_PATHS = frozenset({"/v1/eligibility/stream"})
UNLIMITED_POSTS = re.compile(r"/v1/datasets/[^/]+/versions/[^/]+")

# Transactions one background sweep of the purge obligations may take (SPEC §7.2:
# decisions that expire or take effect later open and close obligations as time passes;
# `Settings.obligation_sweep_seconds` apart). A policy's re-evaluation of millions of
# members then goes on over several sweeps, and a shutdown never waits for all of it.
SWEEP_TRANSACTIONS = 20


def _unlimited(scope: Scope) -> bool:
    path: str = scope["path"]
    if path in UNLIMITED_PATHS:
        return True
    return scope["method"] == "POST" and UNLIMITED_POSTS.fullmatch(path) is not None


class BodyLimit:
    """413 for bodies over the configured size, whether or not they declare a length.

    A body without Content-Length (chunked) is read here, up to the limit, and
    replayed to the app: bounded memory, and no half-read request reaches a route.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _unlimited(scope):
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.limit:
                await self._too_large(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)  # a disconnect: let the app see it
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problems.problem(413, f"request body over {self.limit} bytes")
        await response(scope, receive, send)


class Metrics:
    """Counts and times every request by route and status.

    Plain ASGI rather than `BaseHTTPMiddleware`, which would add a task and a
    body stream to every request.
    """

    def __init__(self, app: ASGIApp, requests: Counter, latency: Histogram) -> None:
        self.app = app
        self.requests = requests
        self.latency = latency
        # `labels()` takes a lock and builds a key on every call: keep each child.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            path = getattr(scope.get("route"), "path_format", "unmatched")
            key = (scope["method"], path, status)
            children = self._children.get(key)
            if children is None:
                children = self._children[key] = (
                    self.latency.labels(key[0], path),
                    self.requests.labels(key[0], path, str(status)),
                )
            children[0].observe(time.perf_counter() - started)
            children[1].inc()


async def sweep_obligations(ledger: ConsentLedger, every: float) -> None:
    """Bring the purge obligations up to the clock every `every` seconds, until cancelled.

    Every worker of `serve` runs one, and that is fine: the catch-up is serialised by
    the write lock and idempotent (a second sweep of the same instant finds nothing left
    to do). A failure is logged (once, until it changes or sweeps work again) and the next
    sweep tries again; a read replica's sweeps fail with `ReadOnlyDatabase`, logged once.
    """
    failing: str | None = None
    while True:
        await anyio.sleep(every)
        try:
            # A cancellation (shutdown) waits for the sweep in the thread to return.
            # Bounded, so that a shutdown never waits for a whole policy's re-evaluation.
            await run_in_threadpool(ledger.sweep_obligations, max_transactions=SWEEP_TRANSACTIONS)
        except Exception as exc:
            if str(exc) != failing:
                # A ledger error (a read-only replica, say) says enough; anything else is
                # a bug, with its traceback.
                trace = None if isinstance(exc, LedgerError) else exc
                logger.error("sweeping purge obligations failed: %s", exc, exc_info=trace)
            failing = str(exc)
            continue
        if failing is not None:
            logger.info("sweeping purge obligations works again")
            failing = None


def create_app(
    settings: Settings | None = None,
    ledger: ConsentLedger | None = None,
    *,
    sweep_every: float | None = None,
) -> FastAPI:
    """The API over `ledger` (or one opened from `settings`).

    `sweep_every` (seconds) runs the obligation sweeper in the background while the
    app is up; `serve` asks for it, tests and benchmarks do not.
    """
    settings = settings or (ledger.settings if ledger else Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with anyio.create_task_group() as background:
            if sweep_every is not None:
                background.start_soon(sweep_obligations, app.state.ledger, sweep_every)
            yield
            background.cancel_scope.cancel()
        if ledger is None:
            app.state.ledger.close()

    app = FastAPI(
        title="consent-ledger",
        version=version("consent-ledger"),
        description="Consent decisions in a signed, append-only log; eligibility checks "
        "with proofs. Errors are RFC 9457 problem details.",
        lifespan=lifespan,
    )
    app.state.ledger = ledger or ConsentLedger(settings)
    registry = CollectorRegistry()
    app.state.metrics = registry
    requests = Counter(
        "consent_ledger_http_requests",
        "HTTP requests by route and status",
        ["method", "route", "status"],
        registry=registry,
    )
    latency = Histogram(
        "consent_ledger_http_request_seconds",
        "HTTP request latency by route",
        ["method", "route"],
        registry=registry,
    )

    problems.install(app)
    # Routes are matched in order: the eligibility checks, by far the most
    # frequent requests, come first.
    for router in (
        eligibility.router,
        health.router,
        subjects.router,
        datasets.router,
        changes.router,
        log.router,
        tlog.router,
        policy.router,
        reports.router,
    ):
        app.include_router(router)
    app.add_middleware(Metrics, requests=requests, latency=latency)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app


def app_from_environment() -> FastAPI:
    """Entry point for uvicorn workers (`api.app:app_from_environment`, factory)."""
    settings = Settings()
    return create_app(settings, sweep_every=settings.obligation_sweep_seconds or None)
