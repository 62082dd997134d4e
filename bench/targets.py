"""One registered measurement per SPEC §6 target, each beside its baseline.

Adding a measurement is one function: decorate it with `@measurement(key,
title)`, return `Result`s (figure, baseline, unit, `Target`); raise
`NotBuilt` while its subject does not exist. The HTTP targets (P1, P2, P4,
P7 API) run a real server and a load-generator process, each pinned to its
core (`bench.apiload`, `bench.server`, `bench.loadgen`).
"""

from __future__ import annotations

import functools
import sys
import time

from pymerkle import InmemoryTree  # type: ignore[import-untyped]

from bench import datasets, feed
from bench.apiload import (
    BATCH_CONNECTIONS,
    BATCH_ITEMS,
    CLIENTS,
    WARMUP_CHECKS,
    api_server,
    batch_load,
    check_load,
    filter_disagreements,
    write_load,
)
from bench.context import Context
from bench.core import Result, Target, measurement, median, percentile, runs_text
from bench.server import WORKERS
from bench.workloads import (
    decide_all,
    plain_insert,
    plain_writes,
    raw_verify,
    read_log,
    read_notes,
    register_all,
    sample_indices,
    time_each,
    write_plan,
)
from ledger.service import ConsentLedger
from ledger.store.db import read_session
from ledger.tlog import log
from ledger.tlog.notes import VerifierKey

# --- HTTP: P1, P2 (P4 and P7's API half below) ------------------------------------------------


@measurement("P1", "batch eligibility over HTTP, 10k-item batches")
def p1_batch_eligibility(ctx: Context) -> list[Result]:
    """Figure: items/s of POST /v1/eligibility/batch (10k items) from the load generator,
    after a cold pass. Baseline: the same subjects' mapping and decision rows read by
    one bare indexed SQL query per batch in the same database.
    Target: ≥ 200,000 items/s and ≥ 0.5 × baseline."""
    stats = batch_load(ctx)
    warm_total = stats["warm_batches"]
    cut = ", stopped at the time bound" if stats["timed_out"] else ""
    return [
        Result(
            key="P1",
            what=f"batch eligibility over HTTP, {BATCH_ITEMS:,}-item batches of pairs from the "
            f"bulk population ({stats['distinct_subjects']:,} subjects)",
            unit="items/s",
            figure=stats["warm_rate"],
            baseline=stats["sql_rate"],
            baseline_what="one indexed IN query per batch for the same subjects' mapping + "
            f"decision rows ({stats['sql_rows']:,} rows per batch), DBAPI, in one process",
            target=Target(minimum=200_000, ratio_min=0.5, text="≥ 200,000 items/s; ratio ≥ 0.5"),
            runs=f"{stats['batches']} batches sent once (cold), then {warm_total} warm sends"
            f"{cut}, {BATCH_CONNECTIONS} connections; baseline: median of {stats['batches']}",
            note=f"cold (first pass after start-up): {stats['cold_rate']:,.0f} items/s; "
            f"warm batch latency p50 {stats['p50_ms']:.0f} ms; request "
            f"{stats['request_kb']:,.0f} KB, answer {stats['response_kb']:,.0f} KB; "
            f"answers to batch 1 that differ from in-process check_many: {stats['mismatches']}",
        )
    ]


@measurement("P2", "single check over HTTP, 32 concurrent clients")
def p2_single_check(ctx: Context) -> list[Result]:
    """Figure: p50/p99 latency and throughput of POST /v1/eligibility/check from 32
    keep-alive connections. Baseline: a bare FastAPI endpoint returning a constant,
    same uvicorn settings. Target: p99 ≤ 20 ms and throughput ≥ 0.5 × baseline."""
    stats = check_load(ctx)
    cut = ", stopped at the time bound" if stats["timed_out"] else ""
    runs = (
        f"{stats['checks']:,} checks{cut} from {CLIENTS} connections after a warm-up "
        f"(batches of the same pairs, {WARMUP_CHECKS} checks); bare: {stats['bare_checks']:,}"
    )
    bare = "bare FastAPI `async def` returning a constant, same uvicorn settings"
    return [
        Result(
            key="P2",
            what=f"single check over HTTP, {CLIENTS} concurrent clients: latency",
            unit="ms",
            figure=stats["p99_ms"],
            baseline=stats["bare_p99_ms"],
            baseline_what=f"p99 of the {bare}",
            target=Target(maximum=20, text="p99 ≤ 20 ms"),
            runs=runs,
            note=f"p99; p50 {stats['p50_ms']:.1f} ms, p90 {stats['p90_ms']:.1f} ms "
            f"(bare p50 {stats['bare_p50_ms']:.1f} ms)",
        ),
        Result(
            key="P2",
            what=f"single check over HTTP, {CLIENTS} concurrent clients: throughput",
            unit="checks/s",
            figure=stats["rate"],
            baseline=stats["bare_rate"],
            baseline_what=f"{bare}; as a plain `def` (thread pool, like the real route): "
            f"{stats['sync_rate']:,.0f}/s",
            target=Target(ratio_min=0.5, text="ratio ≥ 0.5"),
            runs=runs,
        ),
    ]


# --- P3: import --------------------------------------------------------------------------


@measurement("P3", "import of consent records")
def p3_import(ctx: Context) -> list[Result]:
    bulk = ctx.bulk_ledger()
    rows = bulk.info["rows"]
    figure = rows / bulk.info["seconds"]
    path = ctx.csv(rows)
    repeats = 1 if rows >= 100_000 else ctx.scale.repeats
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        plain_insert(bulk.ledger.engine, path)
        times.append(time.perf_counter() - start)
    minimum = 20_000.0 if ctx.engine == "sqlite" else 10_000.0
    return [
        Result(
            key="P3",
            what=f"`consent-ledger import` of {rows:,} CSV rows "
            f"({bulk.info['entries']:,} entries, {bulk.info['batches']} checkpoints)",
            unit="rows/s",
            figure=figure,
            baseline=rows / median(times),
            baseline_what="plain executemany INSERTs of the same CSV rows, 5k per transaction",
            target=Target(minimum=minimum, text=f"≥ {minimum:,.0f} rows/s"),
            runs=f"import: 1 run (wall time of the CLI process, start-up included); "
            f"baseline: {runs_text(repeats)}",
        )
    ]


# --- P4 in-process: concurrent single writes -----------------------------------------------


def single_ledger(ctx: Context) -> dict[str, float]:
    """Build the log written by single appends (P4 in-process, reused by P5)."""
    if "single" in ctx.cache:
        stats: dict[str, float] = ctx.cache["single"]
        return stats
    bench_ledger = ctx.new_ledger("single")
    count = ctx.scale.single_writes // 2
    plan = write_plan(count, bench_ledger.ledger)
    registered = register_all(bench_ledger, plan, ctx.scale.threads)
    decided = decide_all(bench_ledger, plan, ctx.scale.threads)
    plain = plain_writes(bench_ledger.ledger.engine, count, ctx.scale.threads)
    stats = {
        "writes": len(decided.latencies),
        "rate": decided.rate,
        "p50_ms": percentile(decided.latencies, 0.5) * 1000,
        "p99_ms": percentile(decided.latencies, 0.99) * 1000,
        "register_rate": registered.rate,
        "plain_rate": plain.rate,
    }
    ctx.cache["single"] = stats
    ctx.cache["single_ledger"] = bench_ledger
    return stats


@measurement("P4", "single writes with receipts, 32 threads in-process (no HTTP)")
def p4_in_process(ctx: Context) -> list[Result]:
    stats = single_ledger(ctx)
    return [
        Result(
            key="P4",
            what=f"IN-PROCESS (no HTTP): {stats['writes']:,.0f} × record_consents + receipt "
            f"from {ctx.scale.threads} threads",
            unit="writes/s",
            figure=stats["rate"],
            baseline=stats["plain_rate"],
            baseline_what="one-row durable transactions under the ledger's write lock, "
            "same threads",
            target=Target(minimum=500, text="≥ 500 writes/s (HTTP target; this is its ceiling)"),
            runs="1 run",
            note=f"latency p50 {stats['p50_ms']:.1f} ms, p99 {stats['p99_ms']:.1f} ms; "
            f"register_subject from the same threads: {stats['register_rate']:,.0f}/s",
        )
    ]


# --- P5: verify --------------------------------------------------------------------------


def _verify_result(ctx: Context, name: str, label: str) -> Result:
    bench_ledger = ctx.cache["single_ledger"] if name == "single" else ctx.bulk_ledger()
    engine = bench_ledger.ledger.engine
    size = bench_ledger.ledger.tree_size()
    timeout = ctx.scale.verify_timeout
    run = ctx.run_child(
        [sys.executable, "-m", "bench._child", "verify"], env=bench_ledger.env, timeout=timeout
    )
    if run.timed_out:
        seconds, bound = timeout, "<"
        runs = f"1 run, stopped after {timeout:.0f} s"
    elif run.returncode != 0:
        raise RuntimeError(f"verify failed ({run.returncode}): {run.stderr[-2000:]}")
    else:
        seconds, bound, runs = run.json()["seconds"], "", "1 run (in a child process)"
    canonicals = read_log(engine)
    notes = read_notes(engine)
    key = VerifierKey.parse(bench_ledger.ledger.verifier_key())
    times = []
    root = b""
    for _ in range(ctx.scale.repeats):
        start = time.perf_counter()
        root = raw_verify(canonicals, notes, key)
        times.append(time.perf_counter() - start)
    with read_session(engine) as session:
        if root != log.root_at(session, size):
            raise RuntimeError("the raw recomputation disagrees with the ledger's root")
    ctx.cache[f"canonicals_{name}"] = canonicals
    raw_rate = size / median(times)
    return Result(
        key="P5",
        what=f"`verify` of a log written by {label} ({size:,} entries, {len(notes):,} checkpoints)",
        unit="entries/s",
        figure=size / seconds,
        bound=bound,
        baseline=raw_rate,
        baseline_what="hashlib leaf + node hashes and one Ed25519 verify per checkpoint, "
        "over the same bytes",
        target=Target(
            minimum=100_000 if name == "bulk" else None,
            ratio_min=1 / 1.5,
            text=("≥ 100,000 entries/s; " if name == "bulk" else "")
            + "ratio ≥ 0.67 (cost ≤ 1.5 × raw)",
        ),
        runs=f"verify: {runs}; raw: {runs_text(ctx.scale.repeats)}",
        note="" if run.timed_out else f"verify peak RSS {run.max_rss_mb:,.0f} MB",
    )


@measurement("P5", "verify, bulk-imported log")
def p5_verify_bulk(ctx: Context) -> list[Result]:
    return [_verify_result(ctx, "bulk", "bulk import")]


@measurement("P5", "verify, log written by single appends")
def p5_verify_single(ctx: Context) -> list[Result]:
    single_ledger(ctx)
    return [_verify_result(ctx, "single", "single appends")]


# --- P6: proofs --------------------------------------------------------------------------


def _inclusion(ledger: ConsentLedger, index: int, *, size: int) -> object:
    return ledger.inclusion_proof(index, size)


def _consistency(ledger: ConsentLedger, old: int, *, size: int) -> object:
    return ledger.consistency_proof(old, size)


@measurement("P6", "inclusion and consistency proofs, 10k vs 1M entries, vs pymerkle")
def p6_proofs(ctx: Context) -> list[Result]:
    bulk, small = ctx.bulk_ledger(), ctx.small_ledger()
    large_size = min(ctx.scale.large_log_entries, bulk.ledger.tree_size())
    small_size = ctx.scale.small_log_entries
    count = ctx.scale.proofs
    latencies: dict[tuple[str, int], list[float]] = {}
    for bench_ledger, size in ((small, small_size), (bulk, large_size)):
        ledger = bench_ledger.ledger
        indices = sample_indices(size, count)
        olds = [index + 1 for index in sample_indices(size - 1, count, seed=7)]
        latencies["inclusion", size] = time_each(
            indices, functools.partial(_inclusion, ledger, size=size)
        )
        latencies["consistency", size] = time_each(
            olds, functools.partial(_consistency, ledger, size=size)
        )

    # pymerkle (the Python peer) over the same leaves, proofs from its in-memory tree.
    canonicals = ctx.cache.get("canonicals_bulk") or read_log(bulk.ledger.engine, large_size)
    tree = InmemoryTree(algorithm="sha256")
    build_start = time.perf_counter()
    for canonical in canonicals[:large_size]:
        tree.append_entry(canonical)
    build_seconds = time.perf_counter() - build_start
    with read_session(bulk.ledger.engine) as session:
        roots_agree = tree.get_root(large_size) == log.root_at(session, large_size)
    first = time.perf_counter()
    tree.prove_inclusion(1, large_size)
    cold_ms = (time.perf_counter() - first) * 1000
    peer_inclusion = time_each(
        sample_indices(large_size, count),
        lambda index: tree.prove_inclusion(index + 1, large_size),
    )
    peer_consistency = time_each(
        [index + 1 for index in sample_indices(large_size - 1, count, seed=7)],
        lambda old: tree.prove_consistency(old, large_size),
    )

    def ms(values: list[float]) -> float:
        return median(values) * 1000

    def p99(values: list[float]) -> str:
        return f"p99 {percentile(values, 0.99) * 1000:.2f} ms"

    runs = f"median of {count} proofs at random leaves"
    results = []
    for kind in ("inclusion", "consistency"):
        analogue = "" if kind == "inclusion" else " (P6 applied to consistency)"
        large, base = latencies[kind, large_size], latencies[kind, small_size]
        results.append(
            Result(
                key="P6",
                what=f"{kind} proof via ConsentLedger at {large_size:,} entries",
                unit="ms",
                figure=ms(large),
                baseline=ms(base),
                baseline_what=f"the same at {small_size:,} entries",
                target=Target(maximum=5, ratio_max=2, text=f"≤ 5 ms, ratio ≤ 2{analogue}"),
                runs=runs,
                note=f"{p99(large)} at {large_size:,}; {p99(base)} at {small_size:,}",
            )
        )
    for kind, ours, theirs in (
        ("inclusion", latencies["inclusion", large_size], peer_inclusion),
        ("consistency", latencies["consistency", large_size], peer_consistency),
    ):
        results.append(
            Result(
                key="P6",
                what=f"{kind} proof at {large_size:,} entries, ledger vs pymerkle",
                unit="ms",
                figure=ms(ours),
                baseline=ms(theirs),
                baseline_what="pymerkle InmemoryTree over the same leaves (no database)",
                target=Target(text="— (comparison only)"),
                runs=runs,
                note=f"pymerkle: tree built in {build_seconds:.1f} s, first proof (cold cache) "
                f"{cold_ms:.1f} ms, roots agree: {roots_agree}",
            )
        )
    return results


# --- P7: memory --------------------------------------------------------------------------


@measurement("P7", "API RSS under load")
def p7_api(ctx: Context) -> list[Result]:
    """Figure: peak RSS of the API server process(es) over P1's and P2's loads
    (VmHWM, and psutil samples every 50 ms). Baseline: its RSS once ready.
    Target ≤ 250 MB."""
    batches = batch_load(ctx)
    checks = check_load(ctx)
    api = api_server(ctx)
    server = api.server
    processes = len(server.processes())
    return [
        Result(
            key="P7",
            what=f"peak RSS of `consent-ledger serve` ({WORKERS} worker) under P1 + P2 load",
            unit="MB",
            figure=server.peak_mb(),
            baseline=api.idle_rss_mb,
            baseline_what="the same server once ready, before any request",
            target=Target(maximum=250, text="≤ 250 MB"),
            runs=f"1 run: {batches['batches'] * (1 + batches['passes']):,} batches of "
            f"{BATCH_ITEMS:,}, then {checks['checks']:,} single checks",
            note=f"{processes} process(es); kernel VmHWM {server.hwm_mb():,.0f} MB, "
            f"highest psutil sample {server.peak_rss_mb:,.0f} MB; "
            f"start-up to ready {api.startup_seconds:.1f} s",
        )
    ]


@measurement("P7", "peak RSS of `import` of the bulk file")
def p7_import(ctx: Context) -> list[Result]:
    bulk = ctx.bulk_ledger()
    return [
        Result(
            key="P7",
            what=f"peak RSS of `consent-ledger import` of {bulk.info['rows']:,} rows",
            unit="MB",
            figure=bulk.info["max_rss_mb"],
            baseline=_bare_rss(ctx),
            baseline_what="`consent-ledger --version` (interpreter and imports)",
            target=Target(maximum=300, text="≤ 300 MB"),
            runs="1 run (peak RSS by GNU time %M)",
        )
    ]


def _bare_rss(ctx: Context) -> float:
    if "bare_rss" not in ctx.cache:
        ctx.cache["bare_rss"] = ctx.run_child([ctx.console_script(), "--version"]).max_rss_mb
    rss: float = ctx.cache["bare_rss"]
    return rss


FILTER_SAMPLE = 2_000


@measurement("P7", "peak RSS of `filter` of the bulk file")
def p7_filter(ctx: Context) -> list[Result]:
    """Figure: peak RSS of `consent-ledger filter` of the bulk CSV (every row a record,
    its `category` column the record's category) against the bulk ledger. Target ≤ 300 MB."""
    bulk = ctx.bulk_ledger()
    rows = bulk.info["rows"]
    out = ctx.tmp / "filtered.csv"
    run = ctx.run_child(
        [ctx.console_script(), "filter", str(ctx.csv(rows)), "--out", str(out), "--json"],
        env=bulk.env,
    )
    if run.returncode != 0:
        raise RuntimeError(f"filter failed ({run.returncode}): {run.stderr[-2000:]}")
    summary = run.json()
    asked, disagree = filter_disagreements(ctx, ctx.csv(rows), out, summary, FILTER_SAMPLE)
    out.unlink(missing_ok=True)
    return [
        Result(
            key="P7",
            what=f"peak RSS of `consent-ledger filter` of {rows:,} CSV rows",
            unit="MB",
            figure=run.max_rss_mb,
            baseline=_bare_rss(ctx),
            baseline_what="`consent-ledger --version` (interpreter and imports)",
            target=Target(maximum=300, text="≤ 300 MB"),
            runs="1 run (peak RSS by GNU time %M)",
            note=f"{summary['kept']:,} of {summary['rows']:,} kept; "
            f"{rows / run.seconds:,.0f} rows/s (CLI wall time, start-up included); "
            f"{asked:,} records spread over the file asked one by one over the API at the same "
            f"tree size and time: {disagree} disagree",
        )
    ]


# --- R1: the period report (issue #5) -----------------------------------------------------


@measurement("R1", "period report over the bulk log, with the full verify")
def r1_period_report(ctx: Context) -> list[Result]:
    """Figure: wall time of `consent-ledger report period --format json` over the whole
    bulk log, which runs the full verify beside its scan. Baseline: the same report with
    `--no-verify`. Target (issue #5): under a minute at 1,000,000 entries."""
    bulk = ctx.bulk_ledger()
    entries = bulk.ledger.tree_size()
    out = ctx.tmp / "period.json"

    def report(*extra: str) -> float:
        command = ["report", "period", "--format", "json", "-o", str(out), *extra]
        run = ctx.run_child([ctx.console_script(), *command], env=bulk.env)
        if run.returncode != 0:
            raise RuntimeError(f"report period failed ({run.returncode}): {run.stderr[-2000:]}")
        return run.seconds

    seconds = report()
    size_mb = out.stat().st_size / 2**20
    scan = report("--no-verify")
    out.unlink(missing_ok=True)
    return [
        Result(
            key="R1",
            what=f"`consent-ledger report period` over {entries:,} entries, with the full verify",
            unit="s",
            figure=seconds,
            baseline=scan,
            baseline_what="the same report with --no-verify (the window's scan alone)",
            target=Target(maximum=60, text="< 60 s (issue #5)"),
            runs="1 run each (CLI wall time, start-up included)",
            note=f"report {size_mb:,.0f} MB of JSON, signed, with every entry's canonical bytes",
        )
    ]


# --- P8: the change feed (before P9, whose `filter --record` adds builds to the bulk log) -----


@measurement("P8", "change feed over HTTP: the whole log in pages of 10,000")
def p8_feed_pages(ctx: Context) -> list[Result]:
    """Figure: events/s of reading the whole bulk log through GET /v1/changes in pages of
    10,000 (JSON), each page's `next` the next cursor, every event and range proof checked
    by the client. Baseline: the same entries read by a bare SQL query per 10,000.
    Target: ≥ 50,000 events/s. Also the NDJSON stream (baseline: the JSON pages)."""
    stats = feed.log_reads(ctx)
    size, passes = stats["size"], stats["passes"]
    pages, stream, entries = passes["pages"], passes["stream"], passes["entries"]
    bare_rate = size / median(stats["bare_seconds"])
    page_rate = size / pages["seconds"]
    checked = (
        f"every event checked by the client (seqs 0…{size - 1:,} in order, cursors chained, "
        "the range proof into the signed checkpoint)"
    )
    target = Target(minimum=50_000, text="≥ 50,000 events/s")
    return [
        Result(
            key="P8",
            what=f"change feed over HTTP: the {size:,}-entry bulk log read as "
            f"{pages['pages']:,} JSON pages of {feed.PAGE:,} (GET /v1/changes?after=N)",
            unit="events/s",
            figure=page_rate,
            baseline=bare_rate,
            baseline_what=f"the same entries by one bare SQL query per {feed.PAGE:,} (seq, "
            "ref, canonical bytes; DBAPI tuples), in the harness",
            target=target,
            runs=f"1 run, 1 keep-alive connection, the next page asked for as soon as a page "
            f"is in; baseline: {runs_text(ctx.scale.repeats)}",
            note=f"page latency p50 {percentile(pages['latencies'], 0.5) * 1000:,.0f} ms, "
            f"max {max(pages['latencies']) * 1000:,.0f} ms; "
            f"{pages['bytes'] / pages['pages'] / 2**20:,.1f} MB a page "
            f"({pages['bytes'] / size:,.0f} B/event); {checked}; client CPU "
            f"{pages['cpu_seconds']:,.1f} s; the auditor's bare entries over HTTP "
            f"(/v1/ledger/entries, {entries['pages']:,} pages of 1,000): "
            f"{size / entries['seconds']:,.0f} entries/s; "
            f"server peak RSS {stats['peak_rss_mb']:,.0f} MB",
        ),
        Result(
            key="P8",
            what=f"change feed over HTTP: the same log as one NDJSON stream "
            f"(Accept: application/x-ndjson, batches of {feed.PAGE:,})",
            unit="events/s",
            figure=size / stream["seconds"],
            baseline=page_rate,
            baseline_what="the JSON pages (row above)",
            target=target,
            runs="1 run, until the batch end whose next is the log's size",
            note=f"{stream['pages']:,} batches, {stream['bytes'] / size:,.0f} B/event; "
            f"{checked}; client CPU {stream['cpu_seconds']:,.1f} s",
        ),
    ]


@measurement("P8", "change feed: resuming from a late cursor vs an early one")
def p8_feed_resume(ctx: Context) -> list[Result]:
    """Figure: latency of one page of 10,000 events after the late cursor (size − 10,000)
    over HTTP. Baseline: the same after the early cursor (1,000). Target: ratio ≤ 1.5
    (resuming costs O(page), not O(log))."""
    stats = feed.resume_load(ctx)
    times, cursors = stats["times"], stats["cursors"]

    def ms(kind: str) -> float:
        return median(times[kind]) * 1000

    rounds = len(times["http late"])
    runs = (
        f"median of {rounds} rounds, each one page after each cursor over HTTP, in-process "
        "and by bare SQL, interleaved (the order rotating)"
    )
    return [
        Result(
            key="P8",
            what=f"change feed: one page of {feed.PAGE:,} events after cursor "
            f"{cursors['late']:,} (late) over HTTP, beside cursor {cursors['early']:,} (early)",
            unit="ms",
            figure=ms("http late"),
            baseline=ms("http early"),
            baseline_what=f"the same page size after cursor {cursors['early']:,}",
            target=Target(ratio_max=1.5, text="ratio ≤ 1.5 (O(page), not O(log))"),
            runs=runs + "; 1 keep-alive connection (request until the body is in)",
            note=f"in-process `ConsentLedger.changes`: late {ms('in-process late'):,.0f} ms, "
            f"early {ms('in-process early'):,.0f} ms "
            f"({ms('in-process late') / ms('in-process early'):.2f}×); bare SQL read of the "
            f"same entries: late {ms('sql late'):,.1f} ms, early {ms('sql early'):,.1f} ms; "
            f"slowest HTTP page: late {max(times['http late']) * 1000:,.0f} ms, early "
            f"{max(times['http early']) * 1000:,.0f} ms",
        )
    ]


# --- P4 over HTTP (after P5/P6: runs last, on its own ledger and server) --------------------


@measurement("P4", "single-write API, 32 concurrent clients")
def p4_http_writes(ctx: Context) -> list[Result]:
    """Figure: writes/s of POST /v1/subjects/{id}/consents (one decision, a unique
    Idempotency-Key, the receipt in the answer) from 32 connections, on a fresh ledger
    whose subjects were registered just before (in-process, as for the P4 row above).
    Baseline: the same writes in-process (the P4 row above). Target: ≥ 500 writes/s."""
    stats = write_load(ctx)
    in_process = single_ledger(ctx)
    cut = ", stopped at the time bound" if stats["timed_out"] else ""
    return [
        Result(
            key="P4",
            what=f"single-write API over HTTP: {stats['writes']:,} × POST consents (one "
            f"decision, unique Idempotency-Key) with receipt, {CLIENTS} clients",
            unit="writes/s",
            figure=stats["rate"],
            baseline=in_process["rate"],
            baseline_what="the same writes in-process (record_consents + receipt, 32 threads)",
            target=Target(minimum=500, text="≥ 500 writes/s"),
            runs=f"1 run after {stats['warmup']} warm-up writes{cut}",
            note=f"latency p50 {stats['p50_ms']:.1f} ms, p99 {stats['p99_ms']:.1f} ms; "
            f"{stats['entries_per_write']:.2f} entries per write; receipts "
            f"{stats['receipt_kb']:.1f} KB, {stats['receipts_verified']} sampled verified "
            f"with verify_bundle; server peak RSS {stats['peak_rss_mb']:,.0f} MB",
        )
    ]


# --- P9: datasets (last: `filter --record` adds builds to the bulk ledger) ---------------------


@measurement("P9", "filter --record vs filter, bulk file")
def p9_filter_record(ctx: Context) -> list[Result]:
    """Figure: wall time of `consent-ledger filter FILE --out OUT --record posts-train@N
    --json` of the bulk CSV (with a record_id column) against the bulk ledger, in a child
    process. Baseline: the same command without --record, same file, same ledger.
    Target: ratio ≤ 1.3."""
    bulk = ctx.bulk_ledger()
    rows = bulk.info["rows"]
    pairs = 1 if rows >= 100_000 else ctx.scale.repeats
    stats = datasets.filter_runs(ctx, bulk, pairs)
    recorded, plain = median(stats["recorded"]), median(stats["plain"])
    return [
        Result(
            key="P9",
            what=f"`consent-ledger filter --record {datasets.DATASET}@N` of {rows:,} CSV rows "
            f"({stats['kept']:,} kept and recorded as members)",
            unit="s",
            figure=recorded,
            baseline=plain,
            baseline_what="`consent-ledger filter` of the same file (without --record), "
            "same ledger",
            target=Target(ratio_max=1.3, text="ratio ≤ 1.3"),
            runs=f"{runs_text(pairs)} each (CLI wall time, start-up included), alternating",
            note=f"{rows / recorded:,.0f} rows/s with --record, {rows / plain:,.0f} without; "
            f"peak RSS {stats['recorded_rss_mb']:,.0f} MB with, {stats['plain_rss_mb']:,.0f} MB "
            f"without; every run kept the same {stats['kept']:,} rows",
        )
    ]


@measurement("P9", "obligations listed after a withdrawal, 10 builds")
def p9_obligations(ctx: Context) -> list[Result]:
    """Figure: latency of listing a dataset's open obligations after one subject withdrew,
    among 10 builds × `scale.dataset_members` members: over HTTP (GET
    /v1/datasets/posts-train/obligations?status=open, `read` key, a real server) and
    in-process (`ConsentLedger.obligations`). Baselines: the in-process listing (for HTTP),
    and a bare indexed SQL query of the same rows (for in-process). Target: ≤ 50 ms."""
    stats = datasets.listing_load(ctx)
    builds = datasets.recorded_builds(ctx)
    members = len(builds.owners)
    after, before = stats["after"], stats["before"]
    ms, p99 = datasets.ms, datasets.p99_ms
    setup = sum(builds.seconds)
    what = (
        f"open obligations of `{datasets.DATASET}` listed after one subject withdrew "
        f"({median(stats['obligations']):.0f} obligations), {datasets.BUILDS} builds × "
        f"{members:,} members"
    )
    samples = len(after["in-process"])
    runs = (
        f"median of {samples}: {stats['rounds']} subjects withdrawn one after another, "
        f"{datasets.LISTINGS} listings of each kind per withdrawal, interleaved"
    )
    in_process = Result(
        key="P9",
        what=f"{what}: in-process `ConsentLedger.obligations`",
        unit="ms",
        figure=ms(after["in-process"]),
        baseline=ms(after["sql"]),
        baseline_what="one bare indexed SQL query for the same rows (builds by name, their "
        "open obligations by (build, status, id)), DBAPI tuples, same process",
        target=Target(maximum=50, text="≤ 50 ms"),
        runs=runs,
        note=f"p99 {p99(after['in-process']):.2f} ms (SQL p99 {p99(after['sql']):.2f} ms); "
        f"the same listing before each withdrawal (nothing open): "
        f"{ms(before['in-process']):.2f} ms; withdrawal write (opens the obligations inline): "
        f"p50 {ms(stats['withdraw']):.1f} ms, max {max(stats['withdraw']) * 1000:.1f} ms; "
        f"granting again (cancels them) p50 {ms(stats['grant']):.1f} ms; "
        f"withdrawal of a subject with no members p50 {ms(stats['plain']):.1f} ms; "
        f"setup: the import {builds.import_seconds:.0f} s, then 10 builds recorded in "
        f"{setup:.0f} s ({members * datasets.BUILDS / setup:,.0f} members/s; first "
        f"{builds.seconds[0]:.1f} s, last {builds.seconds[-1]:.1f} s), owners drawn from "
        f"the {builds.eligible:,} subjects `{datasets.CATEGORY}` is eligible for",
    )
    if not stats["http"]:
        over_http = Result(
            key="P9",
            what=f"{what}: over HTTP",
            status="not built yet",
            note=f"{datasets.OBLIGATIONS_ROUTE} is being built on branch api-datasets",
        )
    else:
        over_http = Result(
            key="P9",
            what=f"{what}: over HTTP (GET …/obligations?status=open)",
            unit="ms",
            figure=ms(after["http"]),
            baseline=ms(after["in-process"]),
            baseline_what="the same listing in-process (the row below)",
            target=Target(maximum=50, text="≤ 50 ms"),
            runs=runs + "; 1 keep-alive connection",
            note=f"p99 {p99(after['http']):.2f} ms; first listing after each withdrawal "
            f"p50 {ms(stats['first_http']):.2f} ms; before each withdrawal (nothing open) "
            f"{ms(before['http']):.2f} ms; answers that differ from in-process: "
            f"{stats['differ']}; server peak RSS {stats['peak_rss_mb']:,.0f} MB",
        )
    return [over_http, in_process]
