"""The log head as this process knows it: read cheaply, kept fresh within set limits.

Checks that name no `as_of` are answered at the head's tree size; the API also
reads the API clients' generation from it, so that a revoked key is dropped.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, NamedTuple

import anyio.to_thread
from sqlalchemy import Engine, func, select
from sqlmodel import col

from ledger.errors import NotFresh, NotInitialized
from ledger.store.db import read_session
from ledger.store.schema import ApiClient
from ledger.tlog import log

# How old the head a check is answered at may be, per engine (see `HeadSnapshot`):
# SQLite reads it in-process in ~6 µs, so every request reads it afresh. On
# PostgreSQL it is a network round trip that must not hold up an event loop:
# `head_async` re-reads it in the background once it is HEAD_MAX_AGE old,
# answering at the last head meanwhile, and waits for the read only past
# HEAD_STALE_LIMIT.
HEAD_MAX_AGE = {"sqlite": 0.0, "postgresql": 0.005}
HEAD_STALE_LIMIT = 0.1
# How often a change-feed reader waiting for new entries looks at the head again.
WAIT_POLL = 0.1
# The log head and the API clients' generation, in one round trip.
_HEAD_SQL = (
    "SELECT (SELECT tree_size FROM ledger_state WHERE id = 1),"
    " (SELECT count(*) FROM api_clients), (SELECT count(revoked) FROM api_clients)"
)


class HeadSnapshot(NamedTuple):
    """The latest tree size this process has seen, the API clients' generation, and when.

    `clients` changes whenever a client is created or revoked (rows, revoked rows),
    so a cache of authenticated keys keyed by it drops revoked keys. Checks that
    do not name `as_of` are answered at `tree_size`, which is at most
    `HEAD_MAX_AGE` seconds old (in `head_async`: `HEAD_STALE_LIMIT`) — except after
    a write by this process, which moves it at once; a caller that needs its own
    write reflected passes the write's token as `at_least_as_fresh`.
    """

    tree_size: int
    clients: tuple[int, int]
    read_at: float  # time.monotonic()


class _NoSecondConnection(Exception):
    """An in-memory SQLite database cannot be probed on a connection of its own."""


class HeadTracker:
    """Reads the log head on a detached connection and decides when it must be read again."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._head: HeadSnapshot | None = None
        self._max_age = HEAD_MAX_AGE.get(engine.dialect.name, 0.0)
        # Whether reading the head is cheap enough for an event loop (in-process SQLite).
        self.is_local = engine.dialect.name == "sqlite"
        self._lock = threading.Lock()
        self._connection: Any = None
        # The background read `head_async` started, if any (remote databases only).
        self._read_in_flight: asyncio.Future[HeadSnapshot] | None = None

    def close(self) -> None:
        with self._lock:
            self._drop_connection()

    def head(self, *, max_age: float | None = None) -> HeadSnapshot:
        """The log head, re-read when older than `max_age` (default: `HEAD_MAX_AGE`)."""
        head = self.head_nowait(max_age=max_age)
        if head is None:
            with self._lock:
                started = time.monotonic()
                try:
                    size, rows, revoked = self._probe(connect=True)
                except Exception:
                    # Whatever went wrong, the ordinary path reports it properly.
                    self._drop_connection()
                    with read_session(self._engine) as session:
                        size = log.tree_size(session)
                        rows, revoked = session.execute(
                            select(func.count(), func.count(col(ApiClient.revoked)))
                        ).one()
                head = self._new_head(size, rows, revoked, started)
        return head

    def head_nowait(self, *, max_age: float | None = None) -> HeadSnapshot | None:
        """The head from memory, or re-read on the open head connection; None if neither.

        Never connects or waits for a pool, so an event loop may call it.
        """
        head = self._head
        limit = self._max_age if max_age is None else max_age
        if head is not None and time.monotonic() - head.read_at <= limit:
            return head
        # Never wait for the lock either: its holder may be connecting.
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self._connection is None:
                return None
            started = time.monotonic()
            try:
                size, rows, revoked = self._probe(connect=False)
            except Exception:
                self._drop_connection()
                return None
            return self._new_head(size, rows, revoked, started)
        finally:
            self._lock.release()

    async def head_async(self) -> HeadSnapshot:
        """The head for a request on an event loop, which must never wait on the network.

        SQLite: one in-process read per request. PostgreSQL: a round trip, so
        never on the event loop — once the head is `HEAD_MAX_AGE` old one read
        runs in the thread pool while requests go on with the last head, unless it
        is older than `HEAD_STALE_LIMIT`: then they wait for the read.
        """
        if self.is_local:
            head = self.head_nowait()
            if head is None:  # connecting (the first time, or after an error)
                head = await anyio.to_thread.run_sync(self.head)
            return head
        last = self._head
        if last is not None and time.monotonic() - last.read_at <= self._max_age:
            return last
        loop = asyncio.get_running_loop()
        read = self._read_in_flight
        if read is None or read.done() or read.get_loop() is not loop:
            read = asyncio.ensure_future(anyio.to_thread.run_sync(self._read_now))
            # Retrieved here so that a failed read nobody waited for is not logged as lost.
            read.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._read_in_flight = read
        if last is not None and time.monotonic() - last.read_at <= HEAD_STALE_LIMIT:
            return last
        return await asyncio.shield(read)

    async def wait_beyond(self, size: int, timeout: float) -> int:
        """Wait until the log is larger than `size` (a commit by any process on this
        database) or `timeout` seconds pass; the tree size then.

        Polls the head every `WAIT_POLL` seconds: the same cheap read `head_async`
        makes, and unlike a notification it also sees a read replica's replay.
        """
        deadline = time.monotonic() + timeout
        while True:
            head = await self.head_async()
            remaining = deadline - time.monotonic()
            if head.tree_size > size or remaining <= 0:
                return head.tree_size
            await anyio.sleep(min(WAIT_POLL, remaining))

    def wait_beyond_sync(self, size: int, timeout: float) -> int:
        """`wait_beyond` for a thread that may block (the CLI)."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.tree_size()
            remaining = deadline - time.monotonic()
            if current > size or remaining <= 0:
                return current
            time.sleep(min(WAIT_POLL, remaining))

    def _read_now(self) -> HeadSnapshot:
        return self.head(max_age=0.0)

    def saw_tree_size(self, size: int) -> None:
        """A commit by this process: answers reflect it at once, not after HEAD_MAX_AGE."""
        head = self._head
        if head is not None and size > head.tree_size:
            self._head = head._replace(tree_size=size)

    def tree_size(self) -> int:
        """The committed tree size, read from the database now."""
        with read_session(self._engine) as session:
            return log.tree_size(session)

    def await_tree_size(self, wanted: int, timeout: float = 2.0) -> None:
        """Wait briefly for a lagging replica to reach `wanted`; NotFresh if it does not."""
        deadline = time.monotonic() + timeout
        while True:
            size = self.tree_size()
            if size >= wanted:
                return
            if time.monotonic() >= deadline:
                raise NotFresh(f"this server has tree size {size}, not yet {wanted}: retry shortly")
            time.sleep(0.02)

    def _new_head(self, size: int, rows: int, revoked: int, started: float) -> HeadSnapshot:
        # The tree size never goes back, even if a commit here was noted before the read.
        previous = self._head.tree_size if self._head is not None else 0
        self._head = HeadSnapshot(max(size, previous), (rows, revoked), started)
        return self._head

    def _probe(self, *, connect: bool) -> tuple[int, int, int]:
        # One statement on a connection of its own, outside the pool: a pooled
        # checkout would add a ping and a rollback round trip on PostgreSQL.
        if self._connection is None and connect:
            engine = self._engine
            database = engine.url.database
            if engine.dialect.name == "sqlite" and database in (None, "", ":memory:"):
                raise _NoSecondConnection(database)
            pooled = engine.raw_connection()
            driver: Any = pooled.driver_connection
            pooled.detach()  # ours until closed; the pool opens another in its place
            if engine.dialect.name == "postgresql":
                driver.rollback()
                driver.autocommit = True  # one statement, one snapshot, no idle transaction
            self._connection = (driver, driver.cursor())
        cursor = self._connection[1]
        cursor.execute(_HEAD_SQL)
        size, rows, revoked = cursor.fetchone()
        if size is None:
            raise NotInitialized("no ledger in this database: run `consent-ledger init`")
        return int(size), int(rows), int(revoked)

    def _drop_connection(self) -> None:
        if self._connection is not None:
            driver, self._connection = self._connection[0], None
            try:
                driver.close()
            except Exception:  # already broken: nothing left to release
                pass
