"""Profiles of the workloads behind missed targets, with pyinstrument.

    python -m bench.profiles import --db sqlite --rows 100000
    python -m bench.profiles verify --db postgres --rows 50000
    python -m bench.profiles verify-single --db sqlite --rows 4000
    python -m bench.profiles writes --db sqlite --rows 2000
    python -m bench.profiles proofs --db sqlite --rows 100000
    python -m bench.profiles http-batch --db sqlite --rows 100000
    python -m bench.profiles http-check --db postgres --rows 100000
    python -m bench.profiles http-write --db sqlite --rows 2000
    python -m bench.profiles memory-filter --db sqlite --rows 300000
    python -m bench.profiles memory-batch --db sqlite --rows 300000
    python -m bench.profiles feed --db sqlite --rows 100000
    python -m bench.profiles http-feed --db postgres --rows 100000

Each builds its own scratch ledger (dropped afterwards), profiles one run of
the workload in this process and writes `<workload>-<db>.txt` and `.html`
into --out, then prints the call tree and three summaries: the project's own
functions (ledger/, api/) by inclusive time, self time by package, and every
function by self time. `writes` runs its single appends from one thread:
pyinstrument samples one thread, and the cost per write is what the profile
is for (P4's contention shows in `bench`).

The `http-*` workloads serve the real app (`api.app.create_app`) with uvicorn
in this process, on uvloop and httptools like `consent-ledger serve`, and
drive it from `bench.loadgen` in a child process with the requests `bench`
sends (10k-item batches from 2 connections; single checks and single writes
from 32). The profile covers the measured phase only (after the same warm-up
as `bench`). So that one sampled thread sees all the work, the sync routes and
dependencies FastAPI would run in its thread pool run inline on the event-loop
thread instead: the profile shows the cost of the work, not the thread hops
(`bench` P2's bare `def` baseline shows what those cost). `--no-profile`
only measures the rate of that server, with `--thread-pool` as FastAPI runs
it: the two rates show what the thread hops cost the real routes.

`feed` reads the whole log in-process through `ConsentLedger.changes(after,
10000)`, page after page, as the feed route does (P8); `http-feed` sends the
same pages as `GET /v1/changes?after=N&limit=10000` (cursors known in advance:
the log does not grow) from one connection to the in-process server. Both print
the cost per event beside the totals.

The `memory-*` workloads are for P7: tracemalloc's peak and the allocations
still held at the end, by source line, of `filter` or of P1's batch path
(the server's batch route without HTTP), on a fresh ConsentLedger.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pyinstrument import Profiler

from bench.context import ACTOR, DEFAULT_POSTGRES_URL, SCALES, BenchLedger, Context, Engine
from bench.server import HOST, Phase, PhaseResult, free_port, run_load
from bench.workloads import decide_all, register_all, sample_indices, sample_pairs, write_plan
from ledger.service.clients import create_client
from ledger.verify import verify_ledger

PROJECT = ("/ledger/", "/api/")
PACKAGES = (
    "ledger",
    "api",
    "sqlalchemy",
    "sqlmodel",
    "psycopg",
    "fastapi",
    "starlette",
    "pydantic",
    "pydantic_core",
    "uvicorn",
    "httptools",
    "anyio",
    "orjson",
    "cryptography",
    "asyncio",
    "sqlite3",
)


def _summaries(profiler: Profiler, top: int, per: tuple[str, int] | None = None) -> str:
    session = profiler.last_session
    if session is None:
        return ""
    root = session.root_frame()
    if root is None:
        return ""
    total = root.time or 1e-9
    self_time: dict[str, float] = defaultdict(float)
    inclusive: dict[str, float] = defaultdict(float)
    by_package: dict[str, float] = defaultdict(float)

    def name(frame: Any) -> str:
        path = str(frame.file_path_short or frame.file_path or "")
        return f"{frame.function}  {path}:{frame.line_no}"

    def walk(frame: Any, on_stack: frozenset[str]) -> None:
        label = name(frame)
        if frame.is_synthetic:
            # "[self]"/"[await]" frames: already in the parent's total_self_time.
            return
        self_time[label] += frame.total_self_time
        path = str(frame.file_path or "")
        by_package[_package(path)] += frame.total_self_time
        project = any(part in path or path.startswith(part[1:]) for part in PROJECT)
        if project and label not in on_stack:
            inclusive[label] += frame.time
            on_stack = on_stack | {label}
        for child in frame.children:
            walk(child, on_stack)

    walk(root, frozenset())

    def each(seconds: float) -> str:
        # The cost per unit of work (e.g. per event), when the workload says how many.
        return "" if per is None else f"  {seconds / per[1] * 1e6:8.2f} µs/{per[0]}"

    lines = [f"total {total:.2f} s" + (f" for {per[1]:,} {per[0]}s" if per else "")]
    lines += ["", "project functions (ledger/, api/) by inclusive time:"]
    for label, seconds in sorted(inclusive.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"  {100 * seconds / total:5.1f}%  {seconds:7.2f} s{each(seconds)}  {label}")
    lines += ["", "self time by package:"]
    for package, seconds in sorted(by_package.items(), key=lambda item: -item[1]):
        lines.append(f"  {100 * seconds / total:5.1f}%  {seconds:7.2f} s{each(seconds)}  {package}")
    lines += ["", "all functions by self time:"]
    for label, seconds in sorted(self_time.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"  {100 * seconds / total:5.1f}%  {seconds:7.2f} s{each(seconds)}  {label}")
    return "\n".join(lines)


def _package(path: str) -> str:
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    for package in ("ledger", "api", "bench"):
        if f"/{package}/" in path or path.startswith(f"{package}/"):
            return package
    if "/python3." in path:
        parts = path.split("/python3.", 1)[1].split("/")
        return f"stdlib {parts[1].removesuffix('.py')}" if len(parts) > 1 else "stdlib"
    return path or "?"


def profile(
    name: str,
    work: Callable[[], object],
    out: Path,
    top: int,
    per: tuple[str, int] | None = None,
) -> None:
    profiler = Profiler(interval=0.001)
    profiler.start()
    try:
        work()
    finally:
        profiler.stop()
    write_profile(name, profiler, out, top, per)


def write_profile(
    name: str, profiler: Profiler, out: Path, top: int, per: tuple[str, int] | None = None
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tree = profiler.output_text(unicode=True, color=False, show_all=False)
    summary = _summaries(profiler, top, per)
    (out / f"{name}.txt").write_text(tree + "\n\n" + summary + "\n")
    (out / f"{name}.html").write_text(profiler.output_html())
    print(tree)
    print(summary)


# --- HTTP: the real app on uvicorn in this process -------------------------------------------


def _inline_thread_pool() -> None:
    """Run FastAPI's sync routes and dependencies on the event-loop thread (profiling only)."""
    import fastapi.dependencies.utils
    import fastapi.routing

    import api.routes.changes
    import api.routes.eligibility

    async def inline(function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    modules = (fastapi.routing, fastapi.dependencies.utils, api.routes.eligibility)
    for module in (*modules, api.routes.changes):
        module.run_in_threadpool = inline  # type: ignore[attr-defined]


def profile_http(
    name: str,
    bench_ledger: BenchLedger,
    warmup: Sequence[Phase],
    measured: Phase,
    out: Path,
    top: int,
    directory: Path,
    *,
    sampled: bool = True,
    inline: bool = True,
    per: tuple[str, int] | None = None,
) -> PhaseResult:
    import uvicorn

    from api.app import create_app

    if inline:
        _inline_thread_pool()
    port = free_port()
    app = create_app(bench_ledger.settings)
    config = uvicorn.Config(
        app, host=HOST, port=port, log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    profiler = Profiler(interval=0.001, async_mode="disabled")

    async def drive() -> PhaseResult:
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.05)
        try:
            await asyncio.to_thread(run_load, port, list(warmup), directory)
            if sampled:
                profiler.start()
            try:
                loads = await asyncio.to_thread(run_load, port, [measured], directory)
            finally:
                if sampled:
                    profiler.stop()
        finally:
            server.should_exit = True
            await serving
        return loads[measured.name]

    import uvloop

    result = uvloop.run(drive())
    if sampled:
        write_profile(name, profiler, out, top, per)
    how = "under the profiler" if sampled else "not profiled"
    how += ", sync work inline" if inline else ", FastAPI's thread pool"
    print(
        f"measured phase: {result.completed} requests in {result.seconds:.2f} s "
        f"({result.rate:,.0f}/s {how}), statuses {result.statuses}"
    )
    return result


def http_workload(
    workload: str,
    ctx: Context,
    rows: int,
    out: Path,
    top: int,
    *,
    sampled: bool = True,
    inline: bool = True,
) -> None:
    from bench.apiload import (
        BATCH_CONNECTIONS,
        BATCH_ITEMS,
        CLIENTS,
        WARMUP_CHECKS,
        batch_requests,
        check_requests,
        write_requests,
    )

    name = f"{workload}-{ctx.engine}"
    seconds = 120.0
    if workload == "http-write":
        bench_ledger = ctx.new_ledger("http")
        _, key = create_client(bench_ledger.ledger.engine, "bench-writer", ["record"])
        plan = write_plan(rows // 2, bench_ledger.ledger)
        register_all(bench_ledger, plan, CLIENTS)
        decisions = write_requests(key, plan, ctx.tag)
        warmup = [Phase("warmup", decisions[:CLIENTS], CLIENTS, seconds)]
        measured = Phase("decide", decisions[CLIENTS:], CLIENTS, seconds)
        profile_http(
            name, bench_ledger, warmup, measured, out, top, ctx.tmp, sampled=sampled, inline=inline
        )
        return
    bench_ledger = ctx.new_ledger("profiled")
    path = ctx.csv(rows)
    bench_ledger.ledger.import_file(path, actor=ACTOR)
    if workload == "http-feed":
        from bench.apiload import request
        from bench.feed import PAGE

        _, key = create_client(bench_ledger.ledger.engine, "bench-feed", ["feed"])
        size = bench_ledger.ledger.tree_size()
        pages = [
            request("GET", f"/v1/changes?after={after}&limit={PAGE}", key)
            for after in range(0, size, PAGE)
        ]
        warmup = [Phase("warmup", pages[:1], 1, seconds)]
        measured = Phase("pages", pages, 1, 600, must_contain='"checkpoint":')
        profile_http(
            name,
            bench_ledger,
            warmup,
            measured,
            out,
            top,
            ctx.tmp,
            sampled=sampled,
            inline=inline,
            per=("event", size),
        )
        return
    _, key = create_client(bench_ledger.ledger.engine, "bench-api", ["check"])
    if workload == "http-batch":
        batches = batch_requests(key, sample_pairs(path, 5 * BATCH_ITEMS, seed=11))
        warmup = [Phase("cold", batches, BATCH_CONNECTIONS, seconds)]
        measured = Phase("warm", batches * 2, BATCH_CONNECTIONS, seconds)
    else:
        pairs = sample_pairs(path, 3_000, seed=12)
        checks = check_requests(key, pairs)
        warmup = [
            Phase("prime", batch_requests(key, pairs), 1, seconds),
            Phase("warmup", checks[:WARMUP_CHECKS], CLIENTS, seconds),
        ]
        measured = Phase("checks", checks, CLIENTS, seconds)
    profile_http(
        name, bench_ledger, warmup, measured, out, top, ctx.tmp, sampled=sampled, inline=inline
    )


# --- memory (P7): what stays allocated, by tracemalloc ----------------------------------------


def memory_workload(workload: str, ctx: Context, rows: int, out: Path, top: int) -> None:
    """Peak and retained Python allocations of `filter` or of P1's batch path, by line.

    The ledger is imported first; the measured work then runs on a fresh
    ConsentLedger (empty subject cache, as in a new process) under tracemalloc.
    """
    import tracemalloc

    import psutil  # type: ignore[import-untyped]

    from api.routes.eligibility import _evaluate
    from bench.apiload import BATCH_ITEMS
    from bench.workloads import check_item
    from ledger.filtering import filter_dataset
    from ledger.service import ConsentLedger

    bench_ledger = ctx.new_ledger("profiled")
    path = ctx.csv(rows)
    bench_ledger.ledger.import_file(path, actor=ACTOR)
    ledger = ConsentLedger(bench_ledger.settings)
    pairs = sample_pairs(path, 10 * BATCH_ITEMS, seed=11)
    batches = [
        [check_item(pair) for pair in pairs[at : at + BATCH_ITEMS]]
        for at in range(0, len(pairs), BATCH_ITEMS)
    ]
    if workload == "memory-filter":
        batches = []  # the requests are the batch workload's, made before tracing starts
    process = psutil.Process()
    rss_before = process.memory_info().rss
    tracemalloc.start()
    if workload == "memory-filter":
        what = f"filter_dataset of {rows:,} CSV rows"
        filter_dataset(ledger, path, ctx.tmp / "filtered.csv")
    else:
        what = f"{len(batches)} batches of {BATCH_ITEMS:,} through the batch route's _evaluate"
        for items in batches:
            _evaluate(ledger, items, None, None, None, None)
    current, peak = tracemalloc.get_traced_memory()
    snapshot = tracemalloc.take_snapshot()
    tracemalloc.stop()
    rss_after = process.memory_info().rss
    cached = len(ledger._checker.subjects)
    lines = [
        what,
        f"traced: peak {peak / 2**20:,.0f} MB, retained {current / 2**20:,.0f} MB; "
        f"process RSS {rss_before / 2**20:,.0f} -> {rss_after / 2**20:,.0f} MB "
        "(tracemalloc's own bookkeeping included)",
        f"subjects in the subject cache: {cached:,}"
        + (f" ({current / max(1, cached) / 1024:,.1f} KB retained per subject)" if cached else ""),
        "",
        "retained allocations by line:",
    ]
    for stat in snapshot.statistics("lineno")[:top]:
        frame = stat.traceback[0]
        lines.append(
            f"  {stat.size / 2**20:8.1f} MB  {stat.count:>10,} blocks  "
            f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}"
        )
    text = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{workload}-{ctx.engine}.txt").write_text(text + "\n")
    print(text)
    ledger.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profiles", description=__doc__)
    parser.add_argument(
        "workload",
        choices=(
            "import",
            "verify",
            "verify-single",
            "writes",
            "proofs",
            "http-batch",
            "http-check",
            "http-write",
            "memory-batch",
            "memory-filter",
            "feed",
            "http-feed",
        ),
    )
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--rows", type=int, default=100_000, help="rows imported (or writes)")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument(
        "--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "consent-ledger-bench-data"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(tempfile.gettempdir()) / "consent-ledger-bench-profiles"
    )
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--no-profile",
        action="store_true",
        help="http-*: only measure the rate of the in-process server (no sampling)",
    )
    parser.add_argument(
        "--thread-pool",
        action="store_true",
        help="http-*: keep FastAPI's thread pool for sync routes (the default runs them inline)",
    )
    args = parser.parse_args(argv)
    engine: Engine = args.db
    ctx = Context(
        engine=engine,
        scale=SCALES["small"],
        postgres_url=args.postgres_url,
        data_dir=args.data_dir,
    )
    name = f"{args.workload}-{args.db}"
    try:
        if args.workload.startswith("http-"):
            http_workload(
                args.workload,
                ctx,
                args.rows,
                args.out,
                args.top,
                sampled=not args.no_profile,
                inline=not args.thread_pool,
            )
            return
        if args.workload.startswith("memory-"):
            memory_workload(args.workload, ctx, args.rows, args.out, args.top)
            return
        if args.workload == "writes":
            bench_ledger = ctx.new_ledger("writes")
            plan = write_plan(args.rows // 2, bench_ledger.ledger)

            def writes() -> None:
                register_all(bench_ledger, plan, threads=1)
                decide_all(bench_ledger, plan, threads=1)

            profile(name, writes, args.out, args.top)
            return
        if args.workload == "verify-single":
            bench_ledger = ctx.new_ledger("single")
            plan = write_plan(args.rows // 2, bench_ledger.ledger)
            register_all(bench_ledger, plan, threads=4)
            decide_all(bench_ledger, plan, threads=4)
            single_engine = bench_ledger.ledger.engine
            profile(name, lambda: verify_ledger(single_engine), args.out, args.top)
            return
        bench_ledger = ctx.new_ledger("profiled")
        path = ctx.csv(args.rows)
        ledger = bench_ledger.ledger
        if args.workload == "import":
            profile(name, lambda: ledger.import_file(path, actor=ACTOR), args.out, args.top)
            return
        ledger.import_file(path, actor=ACTOR)
        if args.workload == "feed":
            from bench.feed import PAGE

            size = ledger.tree_size()
            ledger.changes(0, PAGE)  # warm-up: the policies parsed, statements prepared

            def pages() -> None:
                after = 0
                while after < size:
                    after = ledger.changes(after, PAGE).next

            profile(name, pages, args.out, args.top, per=("event", size))
            return
        if args.workload == "verify":
            profile(name, lambda: verify_ledger(ledger.engine), args.out, args.top)
            return
        size = ledger.tree_size()

        def proofs() -> None:
            for index in sample_indices(size, 300):
                ledger.inclusion_proof(index, size)
                if index + 1 < size:
                    ledger.consistency_proof(index + 1, size)

        profile(name, proofs, args.out, args.top)
    finally:
        ctx.close()


if __name__ == "__main__":
    main()
