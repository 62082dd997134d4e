"""P9's work (SPEC §6, §7): dataset builds, and the purge obligations a withdrawal opens.

The listing: a ledger of its own holding the bulk population (imported by the CLI,
as the bulk ledger is, so that the bulk log P5, P6 and R1 read stays a pure import),
and 10 builds — versions 1..10 of `posts-train`, each of the same
`scale.dataset_members` records `post-<n>`, recorded through
`ConsentLedger.dataset_recorder` in chunks of 10,000. The records belong to subjects
of the bulk population that `content.public` (allowed by default where no opt-in law
applies) is eligible for, so every record offered becomes a member and every owner
has members in all 10 builds. Then, one subject after another, the subject withdraws
(`*`), its open obligations are listed over HTTP, in-process and by a bare SQL query,
and it grants again, which cancels them: each listing holds exactly one subject's
obligations.

`filter --record`: the real CLI in a child process, on the bulk CSV with a
`record_id` column added, with and without `--record`, against the bulk ledger.
It adds builds to the bulk ledger, so both P9 measurements are registered after
every other measurement that reads that ledger.
"""

from __future__ import annotations

import csv
import functools
import http.client
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine

from bench.context import ACTOR, BenchLedger, ChildRun, Context
from bench.core import NotBuilt, median, percentile
from bench.server import HOST, start_server
from ledger.consent.decisions import DecisionRequest
from ledger.service import BuildItem, ConsentLedger
from ledger.service.clients import create_client
from ledger.store.db import is_sqlite

DATASET = "posts-train"
BUILDS = 10
CATEGORY = "content.public"
CHUNK = 10_000  # items per `BuildRecorder.check`, as `filter --record` sends them
LISTINGS = 5  # listings of each kind per withdrawal
OBLIGATIONS_ROUTE = "/v1/datasets/{name}/obligations"
WITHDRAW = [DecisionRequest(category="*", decision="withdrawn")]
GRANT = [DecisionRequest(category="*", decision="granted")]


# --- the ledger with 10 builds ---------------------------------------------------------------


@dataclass
class Builds:
    bench_ledger: BenchLedger
    owners: list[str]  # the subject of record `post-<n>`, at n
    eligible: int  # subjects of the population the records could belong to
    bystanders: list[str]  # registered subjects with no member (not eligible)
    seconds: list[float]  # each build's recording (checks, spool, the write)
    import_seconds: float


def eligible_subjects(ledger: ConsentLedger, path: Path) -> tuple[list[str], list[str]]:
    """The CSV's subjects, in file order: those `CATEGORY` is eligible for now, the rest."""
    with path.open(newline="", encoding="utf-8") as handle:
        subjects = list(dict.fromkeys(row["subject_id"] for row in csv.DictReader(handle)))
    eligible: list[str] = []
    others: list[str] = []
    for at in range(0, len(subjects), CHUNK):
        chunk = subjects[at : at + CHUNK]
        batch = ledger.check_many([(subject, CATEGORY, None) for subject in chunk])
        for subject, answer in zip(chunk, batch.results, strict=True):
            if isinstance(answer, Exception):
                raise RuntimeError(f"P9: checking {subject} failed: {answer}")
            (eligible if answer.eligible else others).append(subject)
    return eligible, others


def recorded_builds(ctx: Context) -> Builds:
    """The ledger with 10 builds of `scale.dataset_members` members each (built once)."""
    if "p9_builds" in ctx.cache:
        cached: Builds = ctx.cache["p9_builds"]
        return cached
    bench_ledger = ctx.imported_ledger("datasets")
    ledger = bench_ledger.ledger
    eligible, others = eligible_subjects(ledger, ctx.csv(ctx.scale.import_rows))
    rng = random.Random(13)
    owners = [rng.choice(eligible) for _ in range(ctx.scale.dataset_members)]
    seconds = []
    for version in range(1, BUILDS + 1):
        start = time.perf_counter()
        with ledger.dataset_recorder(DATASET, str(version), actor=ACTOR) as recorder:
            for at in range(0, len(owners), CHUNK):
                recorder.check(
                    [
                        BuildItem(n + 1, f"post-{n}", owners[n], CATEGORY)
                        for n in range(at, min(at + CHUNK, len(owners)))
                    ]
                )
            built = recorder.finish()
        seconds.append(time.perf_counter() - start)
        if built.summary.records != len(owners):
            raise RuntimeError(
                f"P9: {DATASET}@{version} recorded {built.summary.records} of {len(owners)} "
                f"records (dropped: {dict(built.summary.dropped)})"
            )
    builds = Builds(
        bench_ledger=bench_ledger,
        owners=owners,
        eligible=len(eligible),
        bystanders=others,
        seconds=seconds,
        import_seconds=bench_ledger.info["seconds"],
    )
    ctx.cache["p9_builds"] = builds
    return builds


# --- listing a withdrawal's obligations ------------------------------------------------------


def bare_listing(engine: Engine) -> int:
    """The rows a listing of the dataset's open obligations must read, by one indexed query.

    `dataset_obligations` by `ix_dataset_obligations_build_status` for the dataset's
    builds (found by `ux_dataset_builds_name`), with each row's version, in the
    listing's order and page size (1,000 + 1), fetched as DBAPI tuples. Returns the rows.
    """
    mark = "?" if is_sqlite(engine) else "%s"
    statement = (
        "SELECT b.version, o.record_id, o.reason, o.cause, o.cause_time, o.due, o.status, "
        "o.closed_seq, o.closed_time FROM dataset_builds b "
        "JOIN dataset_obligations o ON o.build = b.seq "
        f"WHERE b.dataset = {mark} AND o.status = 'open' ORDER BY o.id LIMIT 1001"
    )
    with engine.connect() as connection:
        cursor = connection.connection.cursor()
        try:
            cursor.execute(statement, (DATASET,))
            return len(cursor.fetchall())
        finally:
            cursor.close()


class ObligationsOverHttp:
    """GET /v1/datasets/posts-train/obligations?status=open on one keep-alive connection."""

    def __init__(self, port: int, key: str) -> None:
        self.connection = http.client.HTTPConnection(HOST, port, timeout=60)
        self.headers = {"Authorization": f"Bearer {key}"}
        self.path = OBLIGATIONS_ROUTE.format(name=DATASET) + "?status=open"

    def routes(self) -> set[str]:
        self.connection.request("GET", "/openapi.json")
        answer = self.connection.getresponse()
        paths: dict[str, Any] = orjson.loads(answer.read())["paths"]
        return set(paths)

    def list(self) -> list[dict[str, Any]]:
        self.connection.request("GET", self.path, headers=self.headers)
        answer = self.connection.getresponse()
        body = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"P9: GET {self.path}: {answer.status} {body[:300]!r}")
        obligations: list[dict[str, Any]] = orjson.loads(body)["obligations"]
        return obligations

    def close(self) -> None:
        self.connection.close()


def _timed(operation: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = operation()
    return time.perf_counter() - start, value


def listing_load(ctx: Context) -> dict[str, Any]:
    """Withdraw one owner after another; time the listing of its obligations three ways."""
    builds = recorded_builds(ctx)
    bench_ledger = builds.bench_ledger
    ledger, engine = bench_ledger.ledger, bench_ledger.ledger.engine
    rng = random.Random(17)
    members = Counter(builds.owners)
    rounds = ctx.scale.withdrawals
    chosen = rng.sample(sorted(members), rounds)
    bystanders = rng.sample(builds.bystanders, min(rounds, len(builds.bystanders)))

    _, key = create_client(engine, "bench-datasets", ["read"])
    server = start_server("datasets", [ctx.console_script(), "serve"], bench_ledger.env, ctx.tmp)
    ctx.on_close(server.stop)
    connection = ObligationsOverHttp(server.port, key)
    # While the route is not built yet: in-process and SQL only.
    over_http = connection if OBLIGATIONS_ROUTE in connection.routes() else None
    if over_http is None:
        connection.close()

    def in_process() -> list[dict[str, Any]]:
        listing: list[dict[str, Any]] = ledger.obligations(DATASET, status="open")["obligations"]
        return listing

    def decide(subject: str, decisions: list[DecisionRequest]) -> float:
        """The latency of one write of `decisions` (obligations are kept inside it)."""
        start = time.perf_counter()
        ledger.record_consents(subject, decisions, actor=ACTOR)
        return time.perf_counter() - start

    kinds: dict[str, Callable[[], Any]] = {
        "in-process": in_process,
        "sql": functools.partial(bare_listing, engine),
    }
    if over_http is not None:
        kinds["http"] = over_http.list
    after: dict[str, list[float]] = {kind: [] for kind in kinds}
    before: dict[str, list[float]] = {kind: [] for kind in kinds}
    first_http: list[float] = []
    withdraw, grant, plain = [], [], []
    differ = 0
    try:
        for operation in kinds.values():  # warm-up: connections, statements, caches
            operation()
        for number, subject in enumerate(chosen):
            expected = members[subject] * BUILDS
            order = list(kinds)
            order = order[number % len(order) :] + order[: number % len(order)]
            for kind in order:  # the same listings while nothing is open
                seconds, value = _timed(kinds[kind])
                before[kind].append(seconds)
                if (value if kind == "sql" else len(value)) != 0:
                    raise RuntimeError(f"P9: {kind} lists obligations before the withdrawal")
            withdraw.append(decide(subject, WITHDRAW))
            answers: dict[str, Any] = {}
            for listing in range(LISTINGS):
                for kind in order:
                    seconds, value = _timed(kinds[kind])
                    after[kind].append(seconds)
                    if kind == "http" and listing == 0:
                        first_http.append(seconds)
                    answers[kind] = value
                    count = value if kind == "sql" else len(value)
                    if count != expected:
                        raise RuntimeError(
                            f"P9: {kind} listed {count} obligations after {subject} withdrew, "
                            f"expected {expected} ({members[subject]} records × {BUILDS} builds)"
                        )
                if "http" in answers:
                    differ += answers["http"] != answers["in-process"]
            grant.append(decide(subject, GRANT))
            if number < len(bystanders):
                plain.append(decide(bystanders[number], WITHDRAW))
        if in_process():
            raise RuntimeError("P9: obligations still open after every subject granted again")
    finally:
        if over_http is not None:
            over_http.close()
        peak_mb = server.peak_mb()
        server.stop()
    return {
        "after": after,
        "before": before,
        "first_http": first_http,
        "withdraw": withdraw,
        "grant": grant,
        "plain": plain,
        "differ": differ,
        "rounds": rounds,
        "obligations": [members[subject] * BUILDS for subject in chosen],
        "http": over_http is not None,
        "peak_rss_mb": peak_mb,
    }


def ms(values: Sequence[float]) -> float:
    return median(values) * 1000


def p99_ms(values: Sequence[float]) -> float:
    return percentile(values, 0.99) * 1000


# --- `filter --record` against `filter` ------------------------------------------------------


def records_csv(ctx: Context) -> Path:
    """The bulk CSV with a first column `record_id` = `post-<n>` (n from 0), cached beside it;
    both `filter` runs read this file."""
    source = ctx.csv(ctx.scale.import_rows)
    path = source.with_name(f"{source.stem}-records.csv")
    if path.exists():
        return path
    partial = path.with_suffix(".partial")
    with (
        source.open(newline="", encoding="utf-8") as rows_in,
        partial.open("w", newline="", encoding="utf-8") as rows_out,
    ):
        reader, writer = csv.reader(rows_in), csv.writer(rows_out, lineterminator="\n")
        writer.writerow(["record_id", *next(reader)])
        for number, row in enumerate(reader):
            writer.writerow([f"post-{number}", *row])
    partial.replace(path)
    return path


def filter_runs(ctx: Context, bench_ledger: BenchLedger, pairs: int) -> dict[str, Any]:
    """`pairs` × (`filter`, `filter --record posts-train@<i>`) of the same file, alternating
    which goes first; every run's summary checked against the others'."""
    path = records_csv(ctx)
    out = ctx.tmp / "p9-filtered.csv"
    plain: list[ChildRun] = []
    recorded: list[ChildRun] = []
    summaries: list[dict[str, Any]] = []

    def run(version: int | None) -> None:
        argv = [ctx.console_script(), "filter", str(path), "--out", str(out), "--json"]
        if version is not None:
            argv += ["--record", f"{DATASET}@{version}"]
        child = ctx.run_child(argv, env=bench_ledger.env)
        if child.returncode == 2 and "--record" in child.stderr:
            raise NotBuilt("`filter --record` (SPEC §7.1) is being built on branch cli-datasets")
        if child.returncode != 0:
            raise RuntimeError(f"filter failed ({child.returncode}): {child.stderr[-2000:]}")
        summary = child.json()
        if version is not None:
            build = summary.get("build")
            if not build or build["records"] != summary["kept"]:
                raise RuntimeError(f"P9: filter --record recorded {build} for {summary['kept']}")
        (plain if version is None else recorded).append(child)
        summaries.append(summary)

    for number in range(pairs):
        versions = [None, number + 1] if number % 2 == 0 else [number + 1, None]
        for version in versions:
            run(version)
    out.unlink(missing_ok=True)
    kept = {summary["kept"] for summary in summaries}
    if len(kept) != 1:
        raise RuntimeError(f"P9: the filter runs kept different counts: {sorted(kept)}")
    build = next(summary["build"] for summary in summaries if "build" in summary)
    return {
        "plain": [child.seconds for child in plain],
        "recorded": [child.seconds for child in recorded],
        "plain_rss_mb": max(child.max_rss_mb for child in plain),
        "recorded_rss_mb": max(child.max_rss_mb for child in recorded),
        "rows": summaries[0]["rows"],
        "kept": kept.pop(),
        "errors": build.get("errors", 0),
        "members_root": build["members_root"],
    }
