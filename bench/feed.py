"""P8's work (SPEC §6, §8): the change feed read over HTTP, and resuming from a cursor.

Both run against `consent-ledger serve` (1 worker, pinned to core 0) on the bulk
ledger (the log `consent-ledger import` wrote: 1,292,209 entries at full scale),
with a `feed` key, on a server of their own (so P7's RSS figure stays P1's and
P2's):

- The whole log, read by a client process pinned to core 1 (`bench.feedread`):
  as JSON pages of 10,000 events (`GET /v1/changes?after=N&limit=10000`, each
  page's `next` the next cursor), then as one NDJSON stream (`Accept:
  application/x-ndjson`), then as the auditor's bare entries (`GET
  /v1/ledger/entries`, 1,000 a page). Every event is checked: seqs 0 … size − 1
  in order, cursors chained, every page's range proof into its signed checkpoint.
  Baseline: the same entries read in pages of 10,000 by one bare SQL query each
  (seq, subject ref, canonical bytes; DBAPI tuples) in the harness process.
- Resuming: one page of 10,000 events after an early cursor (1,000) and one after
  a late cursor (size − 10,000), over HTTP from the harness on one keep-alive
  connection, in-process (`ConsentLedger.changes`) and by the bare SQL read of the
  same entries, interleaved (the order rotating from one round to the next).
"""

from __future__ import annotations

import functools
import http.client
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Engine

from bench.context import BenchLedger, Context
from bench.server import HOST, Server, run_client, start_server
from ledger.service.clients import create_client

PAGE = 10_000  # events a page (the most SPEC §8 allows)
EARLY = 1_000  # the early cursor of the resume test; the late one is size − PAGE
CLIENT_TIMEOUT = 3_600.0  # the client process's bound (the full log three ways)


@dataclass
class FeedApi:
    bench_ledger: BenchLedger
    server: Server
    key: str  # `feed` scope
    audit_key: str  # `audit` scope, for /v1/ledger/entries
    size: int


def feed_server(ctx: Context) -> FeedApi:
    """`consent-ledger serve` on the bulk ledger, for P8 only (started once)."""
    if "feed_api" in ctx.cache:
        api: FeedApi = ctx.cache["feed_api"]
        return api
    bulk = ctx.bulk_ledger()
    engine = bulk.ledger.engine
    _, key = create_client(engine, "bench-feed", ["feed"])
    _, audit_key = create_client(engine, "bench-audit", ["audit"])
    server = start_server("feed", [ctx.console_script(), "serve"], bulk.env, ctx.tmp)
    ctx.on_close(server.stop)
    api = FeedApi(bulk, server, key, audit_key, bulk.ledger.tree_size())
    ctx.cache["feed_api"] = api
    return api


def bare_page(engine: Engine, start: int, end: int) -> int:
    """Entries start … end − 1 as the feed must read them at least: (seq, subject ref,
    canonical bytes) by primary key, one query, DBAPI tuples. Returns the rows."""
    with engine.connect() as connection:
        mark = "?" if connection.dialect.paramstyle == "qmark" else "%s"
        cursor = connection.connection.cursor()
        try:
            cursor.execute(
                "SELECT seq, subject, canonical FROM log_entries "
                f"WHERE seq >= {mark} AND seq < {mark} ORDER BY seq",
                (start, end),
            )
            return len(cursor.fetchall())
        finally:
            cursor.close()


def bare_log(engine: Engine, size: int) -> float:
    """Seconds to read the whole log by `bare_page`, PAGE entries at a time."""
    start = time.perf_counter()
    rows = 0
    for at in range(0, size, PAGE):
        rows += bare_page(engine, at, min(size, at + PAGE))
    seconds = time.perf_counter() - start
    if rows != size:
        raise RuntimeError(f"P8: the bare read found {rows} entries of {size}")
    return seconds


def log_reads(ctx: Context) -> dict[str, Any]:
    """The whole log over HTTP three ways (client process), and the bare SQL read."""
    if "p8_log" in ctx.cache:
        cached: dict[str, Any] = ctx.cache["p8_log"]
        return cached
    api = feed_server(ctx)
    ledger = api.bench_ledger.ledger
    spec = {
        "host": HOST,
        "port": api.server.port,
        "key": api.key,
        "audit_key": api.audit_key,
        "verifier_key": ledger.verifier_key(),
        "size": api.size,
        "limit": PAGE,
        "passes": ["pages", "stream", "entries"],
    }
    passes = run_client("bench.feedread", spec, ctx.tmp, CLIENT_TIMEOUT)
    bare_log(ledger.engine, min(api.size, 5 * PAGE))  # warm-up: connection, page cache
    bare = [bare_log(ledger.engine, api.size) for _ in range(ctx.scale.repeats)]
    stats = {
        "size": api.size,
        "passes": passes,
        "bare_seconds": bare,
        "peak_rss_mb": api.server.peak_mb(),
    }
    ctx.cache["p8_log"] = stats
    return stats


class PageOverHttp:
    """GET /v1/changes?after=N&limit=PAGE, each on a connection opened before the clock
    starts (`fresh`): between two pages the in-process and SQL reads run, longer than
    uvicorn keeps an idle connection open (5 s) on a busy machine."""

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.connection = http.client.HTTPConnection(HOST, port, timeout=600)
        self.headers = {"Authorization": f"Bearer {key}"}

    def fresh(self) -> None:
        self.connection.close()
        self.connection = http.client.HTTPConnection(HOST, self.port, timeout=600)
        self.connection.connect()

    def get(self, after: int) -> bytes:
        path = f"/v1/changes?after={after}&limit={PAGE}"
        self.connection.request("GET", path, headers=self.headers)
        answer = self.connection.getresponse()
        body = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"P8: GET {path}: {answer.status} {body[:300]!r}")
        return body

    def close(self) -> None:
        self.connection.close()


def _check_page(
    what: str, after: int, size: int, events: list[dict[str, Any]], following: int
) -> None:
    count = min(PAGE, size - after)
    seqs = [event["seq"] for event in events]
    if seqs != list(range(after, after + count)) or following != after + count:
        raise RuntimeError(
            f"P8: {what} page after {after}: {len(seqs)} events from {seqs[:1]}, next {following}"
        )


def resume_load(ctx: Context) -> dict[str, Any]:
    """One page after the early cursor and one after the late cursor, three ways, in rounds.

    Only the read is timed: over HTTP, the request until the body is in (its parsing,
    the client's work, is not); in-process, `ConsentLedger.changes`; the bare read, its
    query. Every answer is checked afterwards (its events and its `next`)."""
    api = feed_server(ctx)
    ledger, engine, size = api.bench_ledger.ledger, api.bench_ledger.ledger.engine, api.size
    cursors = {"early": min(EARLY, max(0, size - PAGE)), "late": max(0, size - PAGE)}
    over_http = PageOverHttp(api.server.port, api.key)

    def count(after: int) -> int:
        return min(PAGE, size - after)

    def check_http(after: int, body: Any) -> None:
        page = orjson.loads(body)
        _check_page("HTTP", after, size, page["events"], page["next"])

    def check_in_process(after: int, page: Any) -> None:
        _check_page("in-process", after, size, page.events, page.next)

    def check_sql(after: int, rows: Any) -> None:
        if rows != count(after):
            raise RuntimeError(f"P8: the bare read after {after} gave {rows} rows")

    kinds: dict[str, tuple[int, Callable[[], Any], Callable[[int, Any], None]]] = {}
    for position, after in cursors.items():
        kinds[f"http {position}"] = (after, functools.partial(over_http.get, after), check_http)
        kinds[f"in-process {position}"] = (
            after,
            functools.partial(ledger.changes, after, PAGE),
            check_in_process,
        )
        kinds[f"sql {position}"] = (
            after,
            functools.partial(bare_page, engine, after, after + count(after)),
            check_sql,
        )
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    try:
        for kind, (after, operation, check) in kinds.items():  # warm-up: statements, caches
            if kind.startswith("http"):
                over_http.fresh()
            check(after, operation())
        order = list(kinds)
        for number in range(ctx.scale.feed_resumes):
            shift = number % len(order)
            for kind in order[shift:] + order[:shift]:
                after, operation, check = kinds[kind]
                if kind.startswith("http"):
                    over_http.fresh()  # not timed: a new connection, as a resuming client has
                start = time.perf_counter()
                value = operation()
                times[kind].append(time.perf_counter() - start)
                check(after, value)
    finally:
        over_http.close()
    return {"cursors": cursors, "times": times, "size": size}
