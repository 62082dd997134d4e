"""The HTTP measurements' work: a real `consent-ledger serve` under load from another process.

P1, P2 and the API half of P7 share one server on the bulk-imported ledger
(started on first use, stopped when the run ends): P1's batches, then P2's
single checks, and P7 reads the server's peak RSS after both. P4 starts its
own server on a fresh ledger, so that it writes the same subjects and
decisions as the in-process P4 and leaves the bulk log (P5, P6) untouched.
Every request is encoded before the load starts; the load generator only
sends bytes and reads answers (`bench.loadgen`).
Each load is cached in `ctx.cache`, so `--only P7` runs P1's and P2's loads
first and `--only P2` runs only its own.
"""

from __future__ import annotations

import csv
import functools
import http.client
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from bench.context import BenchLedger, Context
from bench.core import median, percentile, timed
from bench.loadgen import encode_request
from bench.server import HOST, Phase, PhaseResult, Server, run_load, start_server
from bench.workloads import (
    Pair,
    WritePlan,
    check_item,
    decision_json,
    register_all,
    sample_pairs,
    sql_lookup,
    write_plan,
)
from ledger.service import CheckRequest
from ledger.service.clients import create_client
from ledger.tlog.evidence import EvidenceBundle, verify_bundle
from ledger.tlog.notes import VerifierKey

BATCH_ITEMS = 10_000
BATCH_CONNECTIONS = 2  # one batch evaluating while the next one's body arrives
CLIENTS = 32
WARMUP_CHECKS = 200


def request(
    method: str,
    path: str,
    key: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> bytes:
    all_headers = {"Authorization": f"Bearer {key}"}
    if body:
        all_headers["Content-Type"] = "application/json"
    all_headers.update(headers or {})
    return encode_request(method, path, host=HOST, body=body, headers=all_headers)


def batch_requests(key: str, pairs: list[Pair]) -> list[bytes]:
    """POST /v1/eligibility/batch of each BATCH_ITEMS-sized slice of `pairs`."""
    return [
        request(
            "POST",
            "/v1/eligibility/batch",
            key,
            orjson.dumps({"items": [check_item(pair) for pair in pairs[at : at + BATCH_ITEMS]]}),
        )
        for at in range(0, len(pairs), BATCH_ITEMS)
    ]


def check_requests(key: str, pairs: list[Pair]) -> list[bytes]:
    return [
        request("POST", "/v1/eligibility/check", key, orjson.dumps(check_item(pair)))
        for pair in pairs
    ]


def write_requests(key: str, plan: WritePlan, tag: str) -> list[bytes]:
    """POST /v1/subjects/{id}/consents of one decision per subject, each its own Idempotency-Key."""
    return [
        request(
            "POST",
            f"/v1/subjects/{quote(subject_id, safe='')}/consents",
            key,
            orjson.dumps({"decisions": [decision_json(decision)]}),
            {"Idempotency-Key": f"bench-{tag}-{number}"},
        )
        for number, (subject_id, decision) in enumerate(plan.decisions)
    ]


def _require(result: PhaseResult, status: int, what: str) -> None:
    if result.ok(status) != result.completed or result.completed == 0:
        raise RuntimeError(f"{what}: expected {status} for every answer, got {result.statuses}")
    if result.lacking:
        raise RuntimeError(f"{what}: {result.lacking} answers lack the expected content")


# --- the shared server on the bulk ledger ---------------------------------------------------


@dataclass
class Api:
    bench_ledger: BenchLedger
    server: Server
    key: str
    idle_rss_mb: float
    startup_seconds: float


def api_server(ctx: Context) -> Api:
    if "api" in ctx.cache:
        api: Api = ctx.cache["api"]
        return api
    bulk = ctx.bulk_ledger()
    _, key = create_client(bulk.ledger.engine, "bench-api", ["check", "read"])
    start = time.perf_counter()
    server = start_server("api", [ctx.console_script(), "serve"], bulk.env, ctx.tmp)
    ctx.on_close(server.stop)
    api = Api(
        bench_ledger=bulk,
        server=server,
        key=key,
        idle_rss_mb=server.rss_mb(),
        startup_seconds=time.perf_counter() - start,
    )
    ctx.cache["api"] = api
    return api


# --- P1: 10k-item batches -------------------------------------------------------------------


def batch_load(ctx: Context) -> dict[str, Any]:
    """Cold and warm items/s of 10k-item batches, and the bare SQL lookup of the same pairs."""
    if "p1" in ctx.cache:
        cached: dict[str, Any] = ctx.cache["p1"]
        return cached
    api = api_server(ctx)
    scale = ctx.scale
    pairs = sample_pairs(ctx.csv(scale.import_rows), scale.batches * BATCH_ITEMS, seed=11)
    batches = [pairs[at : at + BATCH_ITEMS] for at in range(0, len(pairs), BATCH_ITEMS)]
    requests = batch_requests(api.key, pairs)
    phases = [
        Phase("cold", requests, BATCH_CONNECTIONS, scale.http_seconds, keep=[0]),
        Phase("warm", requests * scale.batch_passes, BATCH_CONNECTIONS, scale.http_seconds),
    ]
    loads = run_load(api.server, phases, ctx.tmp)
    cold, warm = loads["cold"], loads["warm"]
    _require(cold, 200, "P1 cold")
    _require(warm, 200, "P1 warm")
    mismatches = _compare_batch(api, batches[0], cold.kept[0])

    engine = api.bench_ledger.ledger.engine
    subject_ids = [[pair[0] for pair in batch] for batch in batches]
    sql_lookup(engine, subject_ids[0])  # warm the page cache / plan, as the server's warm-up
    times = []
    for ids in subject_ids:
        times.append(timed(functools.partial(sql_lookup, engine, ids)))
    stats = {
        "batches": len(batches),
        "passes": scale.batch_passes,
        "cold_rate": cold.completed * BATCH_ITEMS / cold.seconds,
        "warm_rate": warm.completed * BATCH_ITEMS / warm.seconds,
        "warm_batches": warm.completed,
        "timed_out": warm.completed < warm.requests,
        "p50_ms": percentile(warm.latencies, 0.5) * 1000,
        "request_kb": len(requests[0]) / 1024,
        "response_kb": warm.bytes_in / max(1, warm.completed) / 1024,
        "distinct_subjects": len({pair[0] for pair in pairs}),
        "mismatches": mismatches,
        "sql_times": times,
        "sql_rate": BATCH_ITEMS / median(times),
        "sql_rows": sql_lookup(engine, subject_ids[0]),
    }
    ctx.cache["p1"] = stats
    return stats


def _compare_batch(api: Api, batch: list[Pair], body: bytes) -> int:
    """How many of the server's answers to a batch differ from the ledger's own check_many."""
    answer = orjson.loads(body)
    results = answer["results"]
    if len(results) != len(batch):
        raise RuntimeError(f"P1: {len(results)} results for {len(batch)} items")
    errors = [result for result in results if "error" in result]
    if errors:
        raise RuntimeError(f"P1: {len(errors)} items answered with an error, e.g. {errors[0]}")
    expected = api.bench_ledger.ledger.check_many(
        [CheckRequest(subject, category, purpose or None) for subject, category, purpose in batch],
        as_of=answer["checked_at"],
        at=answer["at"],
    )
    mismatches = 0
    for got, want in zip(results, expected.results, strict=True):
        if isinstance(want, Exception) or (got["eligible"], got["reason"]) != (
            want.eligible,
            want.reason,
        ):
            mismatches += 1
    return mismatches


# --- P2: single checks, and the bare FastAPI baseline ---------------------------------------


def check_load(ctx: Context) -> dict[str, Any]:
    """Single checks from 32 clients after a warm-up; the bare app's figures beside them."""
    if "p2" in ctx.cache:
        cached: dict[str, Any] = ctx.cache["p2"]
        return cached
    api = api_server(ctx)
    scale = ctx.scale
    pairs = sample_pairs(ctx.csv(scale.import_rows), scale.checks, seed=12)
    singles = check_requests(api.key, pairs)
    # Warm-up (not timed): one batch per 10k of the same pairs fills the server's
    # subject cache, then a few hundred single checks warm connections and threads.
    primers = batch_requests(api.key, pairs)
    warmup = singles[:WARMUP_CHECKS]
    eligible = '"eligible":'
    loads = run_load(
        api.server,
        [
            Phase("prime", primers, 1, scale.http_seconds),
            Phase("warmup", warmup, CLIENTS, scale.http_seconds),
            Phase("checks", singles, CLIENTS, scale.http_seconds, must_contain=eligible),
        ],
        ctx.tmp,
    )
    checks = loads["checks"]
    _require(loads["prime"], 200, "P2 warm-up batches")
    _require(checks, 200, "P2 checks")

    bare = start_server(
        "bare", [sys.executable, "-m", "bench.bare_app"], api.bench_ledger.env, ctx.tmp
    )
    try:
        sync = [single.replace(b"/v1/eligibility/check", b"/sync/check", 1) for single in singles]
        bare_loads = run_load(
            bare,
            [
                Phase("warmup", warmup, CLIENTS, scale.http_seconds),
                Phase("async", singles, CLIENTS, scale.http_seconds, must_contain=eligible),
                Phase("warmup-sync", sync[:WARMUP_CHECKS], CLIENTS, scale.http_seconds),
                Phase("sync", sync, CLIENTS, scale.http_seconds, must_contain=eligible),
            ],
            ctx.tmp,
        )
    finally:
        bare.stop()
    _require(bare_loads["async"], 200, "P2 bare endpoint")
    _require(bare_loads["sync"], 200, "P2 bare sync endpoint")

    def latency(result: PhaseResult, fraction: float) -> float:
        return percentile(result.latencies, fraction) * 1000

    stats = {
        "checks": checks.completed,
        "timed_out": checks.completed < checks.requests,
        "rate": checks.rate,
        "p50_ms": latency(checks, 0.5),
        "p90_ms": latency(checks, 0.9),
        "p99_ms": latency(checks, 0.99),
        "bare_checks": bare_loads["async"].completed,
        "bare_rate": bare_loads["async"].rate,
        "bare_p50_ms": latency(bare_loads["async"], 0.5),
        "bare_p99_ms": latency(bare_loads["async"], 0.99),
        "sync_rate": bare_loads["sync"].rate,
        "sync_p99_ms": latency(bare_loads["sync"], 0.99),
    }
    ctx.cache["p2"] = stats
    return stats


# --- P4: single writes with receipts --------------------------------------------------------

RECEIPT = '"receipt":{'


def write_load(ctx: Context) -> dict[str, Any]:
    """One decision per subject with its receipt, from 32 clients, on a fresh ledger.

    The subjects (those of the in-process P4) are registered in-process first,
    from 32 threads, before the server starts: the figure is the consent writes.
    """
    bench_ledger = ctx.new_ledger("http")
    ledger = bench_ledger.ledger
    _, key = create_client(ledger.engine, "bench-writer", ["record"])
    plan = write_plan(ctx.scale.single_writes // 2, ledger)
    register_all(bench_ledger, plan, CLIENTS)
    decisions = write_requests(key, plan, ctx.tag)
    keep = list(range(0, len(decisions), max(1, len(decisions) // 20)))
    server = start_server("writes", [ctx.console_script(), "serve"], bench_ledger.env, ctx.tmp)
    ctx.on_close(server.stop)
    try:
        before = ledger.tree_size()
        seconds = ctx.scale.http_seconds
        warmup = decisions[:CLIENTS]
        measured = decisions[CLIENTS:]
        loads = run_load(
            server,
            [
                Phase("warmup", warmup, CLIENTS, seconds, must_contain=RECEIPT),
                Phase("decide", measured, CLIENTS, seconds, keep=keep, must_contain=RECEIPT),
            ],
            ctx.tmp,
        )
        peak_mb = server.peak_mb()
    finally:
        server.stop()
    decide = loads["decide"]
    _require(loads["warmup"], 201, "P4 warm-up writes")
    _require(decide, 201, "P4 writes")
    appended = ledger.tree_size() - before
    trusted = [VerifierKey.parse(ledger.verifier_key())]
    verified = 0
    for body in decide.kept.values():
        bundle = EvidenceBundle.from_json(orjson.loads(body)["receipt"])
        verify_bundle(bundle, trusted)  # raises on any failure
        verified += 1
    return {
        "writes": decide.completed,
        "warmup": loads["warmup"].completed,
        "timed_out": decide.completed < decide.requests,
        "rate": decide.rate,
        "p50_ms": percentile(decide.latencies, 0.5) * 1000,
        "p99_ms": percentile(decide.latencies, 0.99) * 1000,
        "entries_per_write": appended / max(1, loads["warmup"].completed + decide.completed),
        "receipts_verified": verified,
        "receipt_kb": decide.bytes_in / max(1, decide.completed) / 1024,
        "peak_rss_mb": peak_mb,
    }


# --- `filter` against the API, one record at a time -------------------------------------------


def filter_disagreements(
    ctx: Context, source: Path, filtered: Path, summary: dict[str, Any], sample: int
) -> tuple[int, int]:
    """(records asked, answers that disagree): a sample of `source`'s records, asked one by
    one over POST /v1/eligibility/check at the filter's tree size and time, against
    whether `filter` kept them. Kept rows are written in order, so walking both files
    side by side tells for every input row whether it was kept."""
    api = api_server(ctx)
    with source.open(newline="") as rows_in, filtered.open(newline="") as rows_out:
        reader, kept_rows = csv.reader(rows_in), csv.reader(rows_out)
        header = next(reader)
        next(kept_rows)
        subject_at, category_at = header.index("subject_id"), header.index("category")
        pending = next(kept_rows, None)
        verdicts: list[tuple[str, str, bool]] = []
        for row in reader:
            kept = row == pending
            if kept:
                pending = next(kept_rows, None)
            verdicts.append((row[subject_at], row[category_at], kept))
    step = max(1, len(verdicts) // sample)
    connection = http.client.HTTPConnection(HOST, api.server.port, timeout=30)
    asked = disagree = 0
    try:
        for subject, category, kept in verdicts[::step]:
            body = orjson.dumps(
                {
                    "subject_id": subject,
                    "category": category,
                    "as_of": summary["checked_at"],
                    "at": summary["at"],
                }
            )
            connection.request(
                "POST",
                "/v1/eligibility/check",
                body=body,
                headers={"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"},
            )
            answer = connection.getresponse()
            payload = answer.read()
            if answer.status == 422 and not category:
                eligible = False  # a record without a category: filter drops it as invalid
            elif answer.status != 200:
                raise RuntimeError(f"P7 filter sample: {answer.status} {payload[:300]!r}")
            else:
                eligible = orjson.loads(payload)["eligible"]
            asked += 1
            disagree += eligible != kept
    finally:
        connection.close()
    return asked, disagree
