"""Reading a table for verification: one ordered query as plain DBAPI tuples, in batches.

The cost of verifying should be the parsing and hashing, not the reading: no ORM
objects, and a server-side cursor on PostgreSQL so that no table is held at once.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection

# Rows per batch, and entries per chunk of the log: the parsed entries of one chunk are
# held at once (~2 KB each).
CHUNK = 10_000


class OrderedRows:
    """The rows of one ordered query as plain tuples, a batch at a time.

    A server-side cursor on PostgreSQL, so a million-row table is never held
    at once; SQLite's cursors step through the result anyway. `below(end)`
    hands out the rows whose key (column `key_at`) is below `end`, which
    lets a table be read in step with the log's chunks.
    """

    def __init__(self, conn: Connection, sql: str, *, key_at: int = 0) -> None:
        dbapi: Any = conn.connection.dbapi_connection
        if conn.dialect.name == "postgresql":
            OrderedRows._opened += 1
            # Binary results: bytea arrives as bytes, not hex text to decode.
            self._cursor = dbapi.cursor(name=f"verify_{OrderedRows._opened}", binary=True)
        else:
            self._cursor = dbapi.cursor()
        self._cursor.execute(sql)
        self.key_at = key_at
        self._buffer: list[tuple[Any, ...]] = []
        self._done = False

    _opened = 0

    def __enter__(self) -> OrderedRows:
        return self

    def __exit__(self, *_: object) -> None:
        self._cursor.close()

    def _fetch(self) -> list[tuple[Any, ...]]:
        if self._done:
            return []
        batch: list[tuple[Any, ...]] = self._cursor.fetchmany(CHUNK)
        if len(batch) < CHUNK:
            self._done = True
        return batch

    def batches(self) -> Iterator[list[tuple[Any, ...]]]:
        if self._buffer:
            yield self._buffer
            self._buffer = []
        while batch := self._fetch():
            yield batch

    def below(self, end: int | None) -> list[tuple[Any, ...]]:
        """The next rows whose key is below `end` (None: all the rows left)."""
        key_at = self.key_at
        taken: list[tuple[Any, ...]] = []
        while True:
            if not self._buffer:
                self._buffer = self._fetch()
                if not self._buffer:
                    return taken
            buffer = self._buffer
            if end is None or buffer[-1][key_at] < end:
                taken += buffer
                self._buffer = []
                continue
            cut = bisect_left(buffer, end, key=itemgetter(key_at))
            taken += buffer[:cut]
            self._buffer = buffer[cut:]
            return taken
