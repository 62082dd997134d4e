"""The spool: the file in which an import's validated rows wait between its two passes."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import IO, Any

import orjson


class Spool:
    """Pass 1's validated rows, for pass 2 to write without parsing them again.

    One compact JSON array a row in an anonymous temporary file (gone even
    after SIGKILL), so memory stays constant whatever the size of the file;
    the spool is about as large as the file.
    """

    def __init__(self, file: IO[bytes] | None = None) -> None:
        # `file`: the writer process's handle on its importer's spool (see `writer_process`).
        self._file = tempfile.TemporaryFile(buffering=1 << 20) if file is None else file

    def __enter__(self) -> Spool:
        return self

    def fileno(self) -> int:
        return self._file.fileno()

    def flush(self) -> None:
        self._file.flush()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def add(self, position: int, fields: list[Any]) -> None:
        self._file.write(orjson.dumps([position, *fields], option=orjson.OPT_APPEND_NEWLINE))

    def __iter__(self) -> Iterator[list[Any]]:
        """[position, line, subject_id, jurisdiction, jurisdiction_given, minor] and, for a
        decision, category, purpose, decision, explicit, method, notice, effective, expires."""
        self._file.flush()
        self._file.seek(0)
        loads = orjson.loads
        for line in self._file:
            yield loads(line)


def renumbered(spool: Spool, before: int) -> Iterator[list[Any]]:
    """The second half's spool, its positions counted on from the first half's rows."""
    with spool:
        for row in spool:
            row[0] += before
            yield row
