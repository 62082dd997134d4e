"""SPEC §2.5 with real processes and threads: appends are serialised, never fork the
log or skip a seq, and a crash loses no acknowledged entry.

Writers are separate Python processes (`tests/procs/writer.py`, started with
`sys.executable`, each with its own engine) or threads sharing one
`ConsentLedger`. Every write a writer acknowledges is printed as one JSON line
after it committed (tree size, checkpoint hash, entries' seqs and canonical
bytes); afterwards the stored log must contain exactly those bytes at those
seqs, be gap-free and pass `verify_ledger`. Runs on SQLite (file, WAL,
synchronous=FULL) and PostgreSQL.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session
from sqlmodel import col

from ledger.service import ConsentLedger
from ledger.settings import Settings
from ledger.store.db import read_session, write_session
from ledger.store.schema import CheckpointRow, LedgerState, LogEntryRow
from ledger.timestamps import format_timestamp, utc_now
from ledger.tlog.canonical import parse_canonical
from ledger.verify import verify_ledger
from tests.procs.writer import ack as ack_record
from tests.procs.writer import mixed_step

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
WRITER = ROOT / "tests" / "procs" / "writer.py"
GENESIS = 2  # ledger.initialized + policy.published
WAIT = 60.0  # seconds: the bound on every wait for a child process

Ack = dict[str, Any]


# --- child processes ---------------------------------------------------------------------


@dataclass
class Child:
    """A writer process whose stdout lines are read as they come, by a thread."""

    worker: int
    proc: subprocess.Popen[bytes]
    stderr_path: Path
    lines: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue)
    records: list[dict[str, Any]] = field(default_factory=list)
    reader: threading.Thread | None = None

    def start_reader(self) -> None:
        def read() -> None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                # A line cut short by SIGKILL was never acknowledged.
                if raw.endswith(b"\n"):
                    self.lines.put(json.loads(raw))
            self.lines.put(None)

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()

    def next_record(self, deadline: float) -> dict[str, Any] | None:
        """The next line (None at EOF), failing at the deadline."""
        try:
            record = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"worker {self.worker} said nothing in time; stderr:\n{self.stderr()}")
        if record is not None:
            self.records.append(record)
        return record

    def wait_for(self, key: str, deadline: float) -> dict[str, Any]:
        while True:
            record = self.next_record(deadline)
            if record is None:
                pytest.fail(
                    f"worker {self.worker} ended before {key!r} "
                    f"(rc={self.proc.poll()}); stderr:\n{self.stderr()}"
                )
            if key in record:
                return record

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def finish(self, deadline: float) -> list[Ack]:
        """Read to EOF, reap the process and return its acknowledged writes."""
        while self.next_record(deadline) is not None:
            pass
        try:
            self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"worker {self.worker} did not exit; stderr:\n{self.stderr()}")
        if self.reader is not None:
            self.reader.join(timeout=5)
        return self.acks()

    def acks(self) -> list[Ack]:
        return [record for record in self.records if "op" in record]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]


def spawn(settings: Settings, tmp_path: Path, worker: int, count: int, *extra: str) -> Child:
    stderr_path = tmp_path / f"worker-{worker}.err"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CONSENT_LEDGER_KEY_PASSPHRASE", None)
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(WRITER),
                str(settings.home),
                settings.resolved_database_url,
                str(worker),
                str(count),
                *extra,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=ROOT,
            env=env,
        )
    child = Child(worker, proc, stderr_path)
    child.start_reader()
    return child


@pytest.fixture
def children() -> Iterator[list[Child]]:
    """Children the test starts; any still alive at the end are killed."""
    started: list[Child] = []
    yield started
    for child in started:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait(timeout=10)


def run_workers(
    children: list[Child],
    settings: Settings,
    tmp_path: Path,
    workers: int,
    count: int,
    *extra: str,
) -> list[Ack]:
    """Start `workers` processes, release them together, return every acknowledged write."""
    deadline = time.monotonic() + WAIT
    for worker in range(workers):
        children.append(spawn(settings, tmp_path, worker, count, *extra))
    for child in children:
        child.wait_for("ready", deadline)
    for child in children:
        child.go()
    acks: list[Ack] = []
    for child in children:
        mine = child.finish(deadline)
        assert child.proc.returncode == 0, f"worker {child.worker} failed:\n{child.stderr()}"
        assert len(mine) == count, f"worker {child.worker} acknowledged {len(mine)}/{count}"
        acks.extend(mine)
    return acks


# --- checking the stored log against what writers were told -------------------------------


@dataclass(frozen=True)
class StoredLog:
    size: int
    entries: dict[int, bytes]
    checkpoints: dict[int, str]


def read_log(engine: Engine) -> StoredLog:
    with read_session(engine) as session:
        state = session.get(LedgerState, 1)
        assert state is not None
        rows = session.execute(
            select(col(LogEntryRow.seq), col(LogEntryRow.canonical)).order_by(col(LogEntryRow.seq))
        ).all()
        checkpoints = session.execute(
            select(col(CheckpointRow.tree_size), col(CheckpointRow.note))
        ).all()
    sizes = [size for size, _ in checkpoints]
    assert len(sizes) == len(set(sizes)), "two checkpoints share a tree size"
    return StoredLog(
        size=state.tree_size,
        entries={seq: bytes(canonical) for seq, canonical in rows},
        checkpoints=dict(checkpoints),
    )


def check_log(engine: Engine, acks: Sequence[Ack], *, complete: bool) -> StoredLog:
    """The log is gap-free, verifies, and holds every acknowledged write exactly.

    `complete`: every write that committed was acknowledged (no crash), so the
    acknowledged entries are the whole log after genesis and every checkpoint
    but genesis's belongs to one acknowledged write.
    """
    stored = read_log(engine)
    n = stored.size
    assert list(stored.entries) == list(range(n)), "seqs are not 0..n-1"
    assert max(stored.checkpoints) == n, "the last checkpoint does not cover the log"
    assert all(1 <= size <= n for size in stored.checkpoints)

    written = [ack for ack in acks if not ack.get("noop")]
    told_sizes = [ack["tree_size"] for ack in written]
    # Concurrent writes in one process may be group-committed: they then share
    # one transaction, one tree size and one checkpoint, but never a seq.
    seen: set[int] = set()
    for ack in written:
        seqs = [seq for seq, _ in ack["entries"]]
        where = f"worker {ack['w']} write {ack['i']} ({ack['op']})"
        assert seqs, where
        # One write is one contiguous run inside the tree size it was told.
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), where
        assert seqs[-1] <= ack["tree_size"] - 1, where
        assert not seen.intersection(seqs), f"{where}: seq handed out twice"
        seen.update(seqs)
        for seq, canonical in ack["entries"]:
            told = base64.b64decode(canonical)
            assert stored.entries.get(seq) == told, f"{where}: entry {seq} differs from its ack"
            assert parse_canonical(told)["seq"] == seq
        note = stored.checkpoints.get(ack["tree_size"])
        assert note is not None, f"{where}: no checkpoint at {ack['tree_size']}"
        assert hashlib.sha256(note.encode()).hexdigest() == ack["checkpoint_sha256"], where
    assert seen <= set(range(GENESIS, n))
    if complete:
        assert n == GENESIS + sum(len(ack["entries"]) for ack in written)
        assert seen == set(range(GENESIS, n))
        assert sorted(stored.checkpoints) == sorted({GENESIS, *told_sizes})

    report = verify_ledger(engine)
    assert report.entries == n
    assert report.checkpoints == len(stored.checkpoints)
    return stored


# --- 1. processes ------------------------------------------------------------------------


def test_concurrent_processes_never_fork_or_skip(
    ledger: ConsentLedger, settings: Settings, tmp_path: Path, children: list[Child]
) -> None:
    acks = run_workers(children, settings, tmp_path, workers=4, count=25)
    stored = check_log(ledger.engine, acks, complete=True)

    # Shared subjects were registered once each, then only updated.
    kinds = [parse_canonical(raw)["kind"] for raw in stored.entries.values()]
    assert kinds.count("subject.registered") == 2 + 4 * 7  # shared + each worker's own
    # Writers really interleaved: some worker's writes are not one block.
    order = sorted((ack["tree_size"], ack["w"]) for ack in acks if not ack.get("noop"))
    switches = sum(1 for a, b in zip(order, order[1:], strict=False) if a[1] != b[1])
    assert switches > 3, "the workers ran one after another, not concurrently"
    # A writer that comes afterwards continues the same log.
    sealed = ledger.register_subject("after-the-race", actor="test")
    assert sealed is not None
    assert sealed.entries[0].seq == stored.size
    verify_ledger(ledger.engine)


# --- 2. threads --------------------------------------------------------------------------


def test_concurrent_threads_share_one_ledger(ledger: ConsentLedger) -> None:
    threads, count = 8, 15
    barrier = threading.Barrier(threads)
    acks: list[Ack] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(worker: int) -> None:
        try:
            barrier.wait(timeout=WAIT)
            for i in range(count):
                record = mixed_step(ledger, worker, i)
                with lock:
                    acks.append(record)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(worker,)) for worker in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=WAIT)
    assert not any(thread.is_alive() for thread in pool), "a writer thread hung"
    assert not errors, errors
    assert len(acks) == threads * count
    check_log(ledger.engine, acks, complete=True)


# --- 3. SIGKILL ----------------------------------------------------------------------------


@pytest.mark.parametrize("delay", [0.0, 0.03, 0.2], ids=["at-once", "30ms", "200ms"])
def test_sigkill_loses_no_acknowledged_entry(
    ledger: ConsentLedger,
    settings: Settings,
    tmp_path: Path,
    children: list[Child],
    delay: float,
) -> None:
    if ledger.engine.dialect.name == "sqlite":
        with ledger.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    deadline = time.monotonic() + WAIT
    child = spawn(settings, tmp_path, 0, 10**9, "--mode", "loop")
    children.append(child)
    child.wait_for("ready", deadline)
    child.go()
    for _ in range(3):
        child.wait_for("op", deadline)
    # Kill in the middle of whatever it is doing: a write is some milliseconds
    # long, so the jitter moves the kill across its stages.
    time.sleep(delay + random.uniform(0, 0.01))
    os.kill(child.proc.pid, signal.SIGKILL)
    acks = child.finish(deadline)
    assert child.proc.returncode == -signal.SIGKILL
    assert len(acks) >= 3

    # A new ledger instance (new engine, new connections) sees every ack.
    after = ConsentLedger(settings)
    try:
        stored = check_log(after.engine, acks, complete=False)
        assert stored.size >= max(ack["tree_size"] for ack in acks)
        # At most the one write in flight committed without being acknowledged.
        unacked = stored.size - GENESIS - sum(len(ack["entries"]) for ack in acks)
        assert 0 <= unacked <= 4
        # And it can append: the lock was released, the head is intact.
        sealed = after.register_subject("after-the-crash", jurisdiction="FR", actor="test")
        assert sealed is not None
        assert [entry.seq for entry in sealed.entries] == [stored.size]
        assert sealed.tree_size == stored.size + 1
        assert after.check("after-the-crash", "location").checked_at == stored.size + 1
        verify_ledger(after.engine)
    finally:
        after.close()


# --- 4. one subject, many processes ---------------------------------------------------------


def expected_eligibility(
    decisions: Sequence[dict[str, Any]], as_of: int, at: str
) -> tuple[bool, str, int | None]:
    """SPEC §3.4 step 5 for a US subject, `location`, `ai-training` (default: deny)."""
    latest: dict[str, Any] | None = None
    for entry in decisions:
        data = entry["data"]
        if entry["seq"] >= as_of:
            continue
        if data["category"] not in ("location", "*") or data["purpose"] not in (
            "ai-training",
            "*",
        ):
            continue
        if data["effective"] > at or (data["expires"] is not None and at >= data["expires"]):
            continue
        key = (data["effective"], entry["seq"])
        if latest is None or key > (latest["data"]["effective"], latest["seq"]):
            latest = entry
    if latest is None:
        return False, "default-deny", None
    outcome = {"granted": (True, "consent"), "denied": (False, "refused")}
    eligible, reason = outcome.get(latest["data"]["decision"], (False, "withdrawn"))
    return eligible, reason, latest["seq"]


def test_same_subject_from_many_processes(
    ledger: ConsentLedger, settings: Settings, tmp_path: Path, children: list[Child]
) -> None:
    subject = "same-subject"
    registered = ledger.register_subject(subject, jurisdiction="US", actor="test")
    assert registered is not None
    workers, count = 4, 25
    acks = run_workers(
        children, settings, tmp_path, workers, count, "--mode", "same", "--subject", subject
    )
    check_log(ledger.engine, [ack_record(-1, 0, "register", registered), *acks], complete=True)
    assert ledger.tree_size() == GENESIS + 1 + workers * count  # all landed

    ref = parse_canonical(registered.entries[0].canonical)["data"]["subject"]
    decisions = [
        parse_canonical(base64.b64decode(canonical))
        for ack in acks
        for _, canonical in ack["entries"]
    ]
    assert all(entry["data"]["subject"] == ref for entry in decisions)
    assert len({entry["seq"] for entry in decisions}) == workers * count
    history = ledger.subject_history(subject)
    assert [item.index for item in history.entries] == sorted(
        [registered.entries[0].seq, *(entry["seq"] for entry in decisions)]
    )
    view = ledger.subject_view(subject)
    assert [row["seq"] for row in view.decisions] == sorted(entry["seq"] for entry in decisions)

    # The answer at every acknowledged tree size, now and at a past moment
    # where only tied, past-dated decisions apply, is the latest by
    # (effective, seq) — whoever wrote it and in whatever order they ran.
    now = format_timestamp(utc_now())
    past = "2020-02-01T00:00:00.000000Z"  # before EXPIRES: expired ones still apply
    later = "2020-06-01T00:00:00.000000Z"  # after EXPIRES
    sizes = sorted({ack["tree_size"] for ack in acks} | {GENESIS + 1})
    decided_in_past = 0
    for as_of in sizes:
        for at in (now, past, later):
            answer = ledger.check(subject, "location", as_of=as_of, at=at)
            expected = expected_eligibility(decisions, as_of, at)
            assert (answer.eligible, answer.reason, answer.decided_by) == expected, (as_of, at)
            if expected[2] is not None and at != now:
                decided_in_past += 1
    assert decided_in_past > 0
    final = ledger.check(subject, "location", at=now)
    assert final.checked_at == GENESIS + 1 + workers * count
    assert (final.eligible, final.reason, final.decided_by) == expected_eligibility(
        decisions, final.checked_at, now
    )
    # Ties really happened across processes: one effective value, several writers.
    by_effective: dict[str, set[str]] = {}
    for entry in decisions:
        by_effective.setdefault(entry["data"]["effective"], set()).add(entry["actor"])
    assert any(len(actors) > 1 for actors in by_effective.values())


# --- 5. the entry's time is taken under the lock -------------------------------------------

HOLD = 1.0  # seconds the lock is held after the writer's last step before it


def test_entry_time_is_taken_after_the_write_lock(
    ledger: ConsentLedger, settings: Settings, tmp_path: Path, children: list[Child]
) -> None:
    """§2.1 `time` is when the entry was appended: a writer that waited for the lock
    must not stamp its entry with the moment it started waiting, or `time` runs
    backwards along the log and a default `effective` ranks a later decision
    before an earlier one. (Found on SQLite, where the time was taken before the
    lazily begun session emitted BEGIN IMMEDIATE.)"""
    deadline = time.monotonic() + WAIT
    child = spawn(settings, tmp_path, 0, 1, "--mode", "one", "--subject", "late-writer")
    children.append(child)
    child.wait_for("ready", deadline)
    with write_session(ledger.engine) as session:
        session.execute(text("SELECT 1"))  # holds the ledger's write lock from here
        child.go()
        child.wait_for("calling", deadline)
        # The writer's warm-up write is done, so it reaches the lock within
        # milliseconds; PostgreSQL even shows it queued for the advisory lock.
        until = time.monotonic() + HOLD
        while time.monotonic() < until and not lock_waiter(session):
            time.sleep(0.02)
        time.sleep(0.1)
        released = format_timestamp(utc_now())
    *_, ack = child.finish(deadline)
    entry = parse_canonical(base64.b64decode(ack["entries"][0][1]))
    assert (ack["op"], entry["actor"]) == ("register", "one-0")
    assert entry["time"] >= released, (
        f"entry {entry['seq']} is stamped {entry['time']}, before the lock was free at {released}"
    )


def lock_waiter(session: Session) -> bool:
    """On PostgreSQL: someone is queued for an advisory lock (on SQLite: unknowable)."""
    if session.get_bind().dialect.name != "postgresql":
        return False
    waiting = session.execute(
        text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
    ).scalar_one()
    return bool(waiting)
