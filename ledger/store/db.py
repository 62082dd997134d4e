"""Database engines for SQLite (embedded default) and PostgreSQL (production).

The one thing both engines must agree on is how appends are serialised:
writers take the ledger's write lock as their first statement, so every
appender sees the latest committed head and no two can assign the same seq.
SQLite does it with `BEGIN IMMEDIATE`, PostgreSQL with a transaction-scoped
advisory lock.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ledger.errors import AppendOnlyViolation, NotInitialized, ReadOnlyDatabase

T = TypeVar("T")

# An arbitrary, fixed 64-bit key: every writer of this database contends for it.
_WRITE_LOCK_KEY = 0x636F6E73656E74  # "consent"
_WRITE = "consent_ledger_write"
SQLITE_PAGE_SIZE = 16_384


# SQL parameter lists are chunked to stay far below every driver's limit (SQLite's
# is 999 in old builds, psycopg's 65,535).
IN_CLAUSE_LIMIT = 900


# The page cache of a connection doing a bulk write on SQLite (an import's batch, a
# dataset build's members): its index pages stay in memory until it commits (32 MB did
# as well as 64 for an import of 1M rows).
SQLITE_CACHE_KIB = 32 * 1024


def in_chunks(items: Sequence[T], size: int = IN_CLAUSE_LIMIT) -> Iterator[Sequence[T]]:
    """`items` in slices of at most `size`: the values of one SQL `IN (...)` each."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine configured for the ledger's durability and locking rules."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            # Writers from other processes wait for the lock instead of failing.
            connect_args={"timeout": 60, "check_same_thread": False},
            **kwargs,
        )
        _configure_sqlite(engine)
        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(url, pool_pre_ping=True, **kwargs)
    raise ValueError(f"unsupported database {parsed.get_backend_name()!r}")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so that BEGIN is ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # For a new database only (a no-op once it has tables): 16 KB pages, not 4 KB.
        # A bulk import commits a tenth faster (fewer pages to split, write to the WAL
        # and checkpoint); a lookup reads the same few pages, only bigger.
        cursor.execute(f"PRAGMA page_size = {SQLITE_PAGE_SIZE}")
        # WAL: readers never block the writer. synchronous=FULL: a commit the
        # ledger acknowledged survives a power cut, not only a process crash.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock before the first read, so an appender
        # can never build on a head that another writer is about to move.
        immediate = connection.get_execution_options().get(_WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _translate(exc: DBAPIError) -> Exception:
    """Database errors a user can act on, as the ledger's own errors."""
    message = str(exc.orig) if exc.orig is not None else str(exc)
    lowered = message.lower()
    if "no such table" in lowered or ("relation" in lowered and "does not exist" in lowered):
        return NotInitialized("no ledger in this database: run `consent-ledger init`")
    if "read-only transaction" in lowered or "readonly database" in lowered:
        return ReadOnlyDatabase(
            "this server's database is read-only (a replica?): send writes to the primary"
        )
    if "append-only" in lowered:
        return AppendOnlyViolation(message.splitlines()[0])
    return exc


@contextmanager
def translated_errors() -> Iterator[None]:
    try:
        yield
    except DBAPIError as exc:
        translated = _translate(exc)
        if translated is exc:
            raise
        raise translated from exc


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """One all-or-nothing write transaction holding the ledger's write lock.

    Commits when the block ends normally; rolls back on any exception.
    """
    bound = engine.execution_options(**{_WRITE: True})
    with translated_errors(), Session(bound, expire_on_commit=False) as session, session.begin():
        if engine.dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _WRITE_LOCK_KEY})
        yield session


@contextmanager
def state_session(engine: Engine) -> Iterator[Session]:
    """A write transaction on operational state outside the log (webhook cursors, the
    webhook deliverer's lease), committed when the block ends normally.

    On PostgreSQL it does not take the ledger's write lock, so it never waits for an
    append (nor an append for it); on SQLite every write holds the database's lock anyway.
    """
    bound = engine.execution_options(**{_WRITE: True})
    with translated_errors(), Session(bound, expire_on_commit=False) as session, session.begin():
        yield session


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A read-only transaction: one consistent snapshot for everything read in it."""
    with translated_errors(), Session(engine, expire_on_commit=False) as session, session.begin():
        if engine.dialect.name == "postgresql":
            # REPEATABLE READ gives one snapshot for the whole read, so a proof
            # and the checkpoint it is checked against come from the same moment.
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        yield session


def bulk_insert(
    session: Session, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """INSERT many rows straight through the driver, in the session's transaction.

    Appends write several rows per entry; SQLAlchemy's per-row parameter
    processing would cost more than the hashing and signing, so the hot path
    goes to the DBAPI directly (values are plain ints, strings, bools, bytes):
    multi-row INSERTs on SQLite, a binary `COPY` on PostgreSQL, where per-row
    INSERTs cost several times more than the rows' COPY (and COPY is no slower
    even for a single row).
    """
    if not rows:
        return
    connection = session.connection()
    cursor = connection.connection.cursor()
    try:
        if connection.dialect.name == "postgresql":
            types = _column_types(connection, cursor, table, columns)
            with cursor.copy(
                f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(types)
                for row in rows:
                    copy.write_row(row)
            return
        _insert_sqlite_rows(cursor, table, columns, rows)
    finally:
        cursor.close()


# Rows per INSERT statement on SQLite: past a couple of hundred the gain is gone.
_ROWS_PER_STATEMENT = 200


def _insert_sqlite_rows(
    cursor: Any,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
) -> None:
    """`executemany` of multi-row INSERTs: each statement carries up to
    `_ROWS_PER_STATEMENT` rows, which nearly halves SQLite's cost per row against
    one statement per row (fewer steps, resets and driver round trips)."""
    one_row = f"({', '.join('?' for _ in columns)})"
    variables = cursor.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    per_statement = max(1, min(_ROWS_PER_STATEMENT, variables // len(columns)))
    prefix = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
    whole = len(rows) - len(rows) % per_statement
    flatten = itertools.chain.from_iterable
    if whole:
        cursor.executemany(
            prefix + ", ".join([one_row] * per_statement),
            [
                list(flatten(rows[start : start + per_statement]))
                for start in range(0, whole, per_statement)
            ],
        )
    if whole < len(rows):
        rest = rows[whole:]
        cursor.execute(prefix + ", ".join([one_row] * len(rest)), list(flatten(rest)))


def _column_types(
    connection: Connection, cursor: Any, table: str, columns: Sequence[str]
) -> list[int]:
    """The type OIDs of `table`'s `columns`, which a binary COPY must declare.

    Read from the catalog once per database connection: the schema is the
    migrations', and a wrong type would fail the COPY, never corrupt it.
    """
    known: dict[str, dict[str, int]] = connection.info.setdefault("copy_column_types", {})
    types = known.get(table)
    if types is None:
        cursor.execute(
            "SELECT attname, atttypid FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (table,),
        )
        types = known[table] = {name: int(oid) for name, oid in cursor.fetchall()}
    return [types[column] for column in columns]
