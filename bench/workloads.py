"""The work the measurements time, kept apart so that `bench.profiles` can profile it."""

from __future__ import annotations

import base64
import csv
import hashlib
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Engine, text

from bench.context import ACTOR, BenchLedger
from bench.data import generate_rows
from ledger.consent.decisions import DecisionRequest
from ledger.importing import FIELDS, parse_record
from ledger.service import ConsentLedger
from ledger.store.db import is_sqlite, write_session
from ledger.tlog.notes import VerifierKey

T = TypeVar("T")

# --- P3 baseline: plain INSERTs ------------------------------------------------------------

PLAIN_TABLE = "bench_plain_rows"


def plain_insert(engine: Engine, path: Path, batch_size: int = 5_000) -> int:
    """Read the CSV and INSERT its rows as they are into an indexed table, in batches.

    The floor under `import`: the same rows reach the same database with the
    same durability settings and one transaction per batch, but without
    validation, hashing, signing, projections or Merkle nodes.
    """
    with engine.begin() as connection:
        connection.execute(text(f"DROP TABLE IF EXISTS {PLAIN_TABLE}"))
        columns = ", ".join(f"{name} VARCHAR(512)" for name in FIELDS)
        connection.execute(text(f"CREATE TABLE {PLAIN_TABLE} (line BIGINT PRIMARY KEY, {columns})"))
        connection.execute(
            text(
                f"CREATE INDEX ix_{PLAIN_TABLE}_subject ON {PLAIN_TABLE} "
                "(subject_id, category, purpose)"
            )
        )
    placeholder = "?" if is_sqlite(engine) else "%s"
    sql = (
        f"INSERT INTO {PLAIN_TABLE} (line, {', '.join(FIELDS)}) "
        f"VALUES ({', '.join(placeholder for _ in range(len(FIELDS) + 1))})"
    )
    count = 0
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader)
        batch: list[list[str | int]] = []
        for line, values in enumerate(reader, start=2):
            batch.append([line, *values])
            if len(batch) >= batch_size:
                _insert_batch(engine, sql, batch)
                count += len(batch)
                batch = []
        _insert_batch(engine, sql, batch)
        count += len(batch)
    return count


def _insert_batch(engine: Engine, sql: str, batch: Sequence[Sequence[object]]) -> None:
    if not batch:
        return
    with engine.begin() as connection:
        cursor = connection.connection.cursor()
        try:
            cursor.executemany(sql, batch)
        finally:
            cursor.close()


# --- P4: concurrent single writes ----------------------------------------------------------


@dataclass
class WritePlan:
    """Subjects to register and one decision each, from the benchmark data."""

    subjects: list[tuple[str, str | None, bool]]
    decisions: list[tuple[str, DecisionRequest]]


def write_plan(count: int, ledger: ConsentLedger, seed: int = 4) -> WritePlan:
    policy = ledger.current_policy()
    heads: dict[str, tuple[str, str | None, bool]] = {}
    firsts: dict[str, DecisionRequest] = {}
    for line, raw in enumerate(generate_rows(count * 4, seed=seed), start=2):
        record = parse_record(line, raw, policy)
        if record.subject_id not in heads:
            if len(heads) == count:
                break
            heads[record.subject_id] = (record.subject_id, record.jurisdiction, bool(record.minor))
        if record.decision is not None and record.subject_id not in firsts:
            request = record.decision
            firsts[record.subject_id] = DecisionRequest(
                category=request.category,
                decision=request.decision,
                purpose=request.purpose,
                explicit=request.explicit,
                method="api",
                notice=request.notice,
                effective=request.effective,
                expires=request.expires,
            )
    fallback = DecisionRequest(category="content.public", decision="granted", method="api")
    decisions = [(subject, firsts.get(subject, fallback)) for subject in heads]
    return WritePlan(subjects=list(heads.values()), decisions=decisions)


@dataclass
class Concurrent:
    seconds: float
    latencies: list[float]  # seconds, one per operation

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds


def run_concurrently(
    items: Sequence[T], operation: Callable[[T], object], threads: int
) -> Concurrent:
    """Run `operation` over `items` from `threads` threads; wall time and per-item latency."""
    latencies: list[float] = []
    lock = threading.Lock()

    def one(item: T) -> None:
        start = time.perf_counter()
        operation(item)
        elapsed = time.perf_counter() - start
        with lock:
            latencies.append(elapsed)

    start = time.perf_counter()
    if threads == 1:
        # In the calling thread: what `bench.profiles` needs to see the work.
        for item in items:
            one(item)
        return Concurrent(seconds=time.perf_counter() - start, latencies=latencies)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(one, item) for item in items]:
            future.result()
    return Concurrent(seconds=time.perf_counter() - start, latencies=latencies)


def register_all(bench_ledger: BenchLedger, plan: WritePlan, threads: int) -> Concurrent:
    ledger = bench_ledger.ledger

    def register(subject: tuple[str, str | None, bool]) -> None:
        subject_id, jurisdiction, minor = subject
        ledger.register_subject(subject_id, jurisdiction=jurisdiction, minor=minor, actor=ACTOR)

    return run_concurrently(plan.subjects, register, threads)


def decide_all(bench_ledger: BenchLedger, plan: WritePlan, threads: int) -> Concurrent:
    """`record_consents` of one decision and its receipt (evidence bundle), per subject."""
    ledger = bench_ledger.ledger

    def decide(item: tuple[str, DecisionRequest]) -> None:
        subject_id, request = item
        sealed = ledger.record_consents(subject_id, [request], actor=ACTOR)
        ledger.receipt(sealed)

    return run_concurrently(plan.decisions, decide, threads)


PLAIN_WRITES = "bench_plain_writes"


def plain_writes(engine: Engine, count: int, threads: int) -> Concurrent:
    """One durable one-row transaction under the ledger's write lock, per write."""
    with engine.begin() as connection:
        connection.execute(text(f"DROP TABLE IF EXISTS {PLAIN_WRITES}"))
        connection.execute(
            text(f"CREATE TABLE {PLAIN_WRITES} (id BIGINT PRIMARY KEY, payload VARCHAR(512))")
        )
    statement = text(f"INSERT INTO {PLAIN_WRITES} (id, payload) VALUES (:id, :payload)")

    def write(number: int) -> None:
        with write_session(engine) as session:
            session.execute(statement, {"id": number, "payload": f"user-{number:08d} granted"})

    return run_concurrently(range(count), write, threads)


# --- P5 baseline: the raw cost of verification ---------------------------------------------


def read_log(engine: Engine, limit: int | None = None, chunk: int = 50_000) -> list[bytes]:
    """Every entry's canonical bytes, in seq order."""
    out: list[bytes] = []
    start = 0
    with engine.connect() as connection:
        while limit is None or start < limit:
            stop = start + chunk if limit is None else min(start + chunk, limit)
            rows = connection.execute(
                text("SELECT canonical FROM log_entries WHERE seq >= :a AND seq < :b ORDER BY seq"),
                {"a": start, "b": stop},
            ).all()
            if not rows:
                break
            out.extend(bytes(row[0]) for row in rows)
            start = stop
    return out


def read_notes(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return [
            str(row[0])
            for row in connection.execute(text("SELECT note FROM checkpoints ORDER BY tree_size"))
        ]


def raw_verify(canonicals: Sequence[bytes], notes: Sequence[str], key: VerifierKey) -> bytes:
    """What `verify` cannot avoid: a leaf hash per entry, n-1 node hashes, a signature
    check per checkpoint. Returns the root (so the caller can check it)."""
    sha256 = hashlib.sha256
    level = [sha256(b"\x00" + canonical).digest() for canonical in canonicals]
    while len(level) > 1:
        paired = [
            sha256(b"\x01" + level[index] + level[index + 1]).digest()
            for index in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            paired.append(level[-1])  # RFC 9162: a lone right node moves up unchanged
        level = paired
    public = Ed25519PublicKey.from_public_bytes(key.public_key)
    for note in notes:
        body, signatures = note.split("\n\n", 1)
        message = (body + "\n").encode()
        for line in signatures.splitlines():
            raw = base64.b64decode(line.rsplit(" ", 1)[1])
            public.verify(raw[4:], message)
    return level[0] if level else sha256(b"").digest()


# --- P6: proofs ----------------------------------------------------------------------------


def sample_indices(size: int, count: int, seed: int = 6) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(size) for _ in range(count)]


def time_each(items: Sequence[T], operation: Callable[[T], object]) -> list[float]:
    """Latency (seconds) of `operation` on each item, after a short warm-up."""
    for item in items[:5]:
        operation(item)
    latencies = []
    for item in items:
        start = time.perf_counter()
        operation(item)
        latencies.append(time.perf_counter() - start)
    return latencies


# --- HTTP targets (P1, P2, P4): requests from the benchmark population ----------------------

Pair = tuple[str, str, str]  # (subject_id, category, purpose or "" for the default)


def sample_pairs(path: Path, count: int, seed: int) -> list[Pair]:
    """`count` (subject, category, purpose) triples of decision rows of the CSV, in random order.

    A uniform sample without replacement (reservoir) while the file has enough
    decision rows, topped up with repeats when it has not (small scale).
    """
    rng = random.Random(seed)
    reservoir: list[Pair] = []
    seen = 0
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        subject_at, category_at, purpose_at = (
            header.index(name) for name in ("subject_id", "category", "purpose")
        )
        for values in reader:
            if not values[category_at]:
                continue  # a registration-only row
            pair = (values[subject_at], values[category_at], values[purpose_at])
            if len(reservoir) < count:
                reservoir.append(pair)
            else:
                slot = rng.randrange(seen + 1)
                if slot < count:
                    reservoir[slot] = pair
            seen += 1
    rng.shuffle(reservoir)
    if reservoir and len(reservoir) < count:
        reservoir += rng.choices(reservoir, k=count - len(reservoir))
    return reservoir


def check_item(pair: Pair) -> dict[str, str]:
    subject_id, category, purpose = pair
    item = {"subject_id": subject_id, "category": category}
    if purpose:
        item["purpose"] = purpose
    return item


def decision_json(request: DecisionRequest) -> dict[str, object]:
    """A DecisionRequest as the body of POST /v1/subjects/{id}/consents takes it."""
    document: dict[str, object] = {
        "category": request.category,
        "decision": request.decision,
        "explicit": bool(request.explicit),
        "method": request.method,
    }
    for name in ("purpose", "notice", "effective", "expires"):
        value = getattr(request, name)
        if value is not None:
            document[name] = value
    return document


# --- P1 baseline: a bare indexed SQL lookup of the same pairs --------------------------------


def sql_lookup(engine: Engine, subject_ids: Sequence[str]) -> int:
    """The mapping and decision rows of a batch's subjects, by one indexed IN query.

    What any eligibility answer must at least read: `subjects` by its primary
    key, then `consent_decisions` by `ix_consent_decisions_ref_seq`, fetched
    as DBAPI tuples, without evaluating anything. Returns the rows read.
    """
    distinct = list(dict.fromkeys(subject_ids))
    columns = (
        "s.subject_id, s.ref, d.seq, d.category, d.purpose, d.decision, d.explicit, "
        "d.effective, d.expires FROM subjects s LEFT JOIN consent_decisions d ON d.ref = s.ref"
    )
    with engine.connect() as connection:
        cursor = connection.connection.cursor()
        try:
            if is_sqlite(engine):
                marks = ",".join("?" * len(distinct))
                cursor.execute(f"SELECT {columns} WHERE s.subject_id IN ({marks})", distinct)
            else:
                cursor.execute(f"SELECT {columns} WHERE s.subject_id = ANY(%s)", (distinct,))
            return len(cursor.fetchall())
        finally:
            cursor.close()
