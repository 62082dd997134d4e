"""Filtering a training dataset down to the records its subjects allow.

A dataset file (CSV with a header, JSONL, or Parquet with the `parquet` extra)
streams through in chunks; every chunk is checked in one `check_many` at the
same tree size and time, so the output is reproducible with `as_of`/`at`, and
memory stays constant however large the file. Kept records are written
unchanged and in their original order.

With `record="NAME@VERSION"` the same pass records the build (SPEC §7.1): each
chunk goes through the build recorder's own check (one check, not two), the kept
records are its eligible answers, and the output file appears only once the
build is recorded.
"""

from __future__ import annotations

import contextlib
import csv
import os
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import orjson

from ledger.consent.datasets import CATEGORY_SEPARATOR, parse_build
from ledger.errors import InvalidInput, LedgerError
from ledger.service import (
    BuildItem,
    BuildRecorder,
    CheckRequest,
    ConsentLedger,
    ItemError,
    RecordedBuild,
    cli_actor,
)

CHUNK = 10_000
# Rows with an error that a recorded filter's summary shows (the rest are counted).
SHOWN_ERRORS = 10


class BuildRefused(LedgerError):
    """The ledger refused to record a filtered build (record ids repeated or malformed):
    nothing was recorded and the output file was not written. Not a usage error: the
    dataset's content is at fault, so the CLI exits 1."""


@dataclass
class FilterSummary:
    rows: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    checked_at: int = 0
    at: str = ""
    policy_version: int = 0
    # A recorded filter's build, and its first rows with an error (all are in `dropped`).
    build: RecordedBuild | None = None
    errors: list[ItemError] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        document = {
            "rows": self.rows,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "checked_at": self.checked_at,
            "at": self.at,
            "policy_version": self.policy_version,
        }
        if self.build is not None:
            document.update(self.build.to_json())
            document["errors"] = [error.to_json() for error in self.errors]
        return document


def dataset_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    raise InvalidInput(
        f"cannot tell the format of {path.name}: use .csv, .jsonl or .parquet", field="FILE"
    )


class _Records(Protocol):
    """A chunked reader and writer pair for one format."""

    def columns(self) -> list[str] | None: ...  # None: records may differ (JSONL)
    def chunks(self) -> Iterator[list[tuple[dict[str, Any], Any]]]: ...
    def write(self, kept: list[Any]) -> None: ...
    def close(self) -> None: ...


class _CsvRecords:
    def __init__(self, source: Path, out: Path) -> None:
        self._in: IO[str] = source.open(newline="", encoding="utf-8-sig")
        self._reader = csv.reader(self._in)
        header = next(self._reader, None)
        if header is None:
            raise InvalidInput("the dataset has no header row", field="FILE")
        self._header = header
        self._out: IO[str] = out.open("w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._out)
        self._writer.writerow(header)

    def columns(self) -> list[str] | None:
        return self._header

    def chunks(self) -> Iterator[list[tuple[dict[str, Any], Any]]]:
        chunk: list[tuple[dict[str, Any], Any]] = []
        for values in self._reader:
            chunk.append((dict(zip(self._header, values, strict=False)), values))
            if len(chunk) >= CHUNK:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def write(self, kept: list[Any]) -> None:
        self._writer.writerows(kept)

    def close(self) -> None:
        self._in.close()
        self._out.close()


class _JsonlRecords:
    def __init__(self, source: Path, out: Path) -> None:
        self._in: IO[bytes] = source.open("rb")
        self._out: IO[bytes] = out.open("wb")

    def columns(self) -> list[str] | None:
        return None

    def chunks(self) -> Iterator[list[tuple[dict[str, Any], Any]]]:
        chunk: list[tuple[dict[str, Any], Any]] = []
        for line in self._in:
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                record = None
            chunk.append((record if isinstance(record, dict) else {}, line))
            if len(chunk) >= CHUNK:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def write(self, kept: list[Any]) -> None:
        for line in kept:
            self._out.write(line if line.endswith(b"\n") else line + b"\n")

    def close(self) -> None:
        self._in.close()
        self._out.close()


class _ParquetRecords:
    def __init__(self, source: Path, out: Path) -> None:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise InvalidInput(
                "Parquet needs the `parquet` extra: pip install 'consent-ledger[parquet]'",
                field="FILE",
            ) from None
        self._file = pq.ParquetFile(source)
        self._writer = pq.ParquetWriter(out, self._file.schema_arrow)

    def columns(self) -> list[str] | None:
        return list(self._file.schema_arrow.names)

    def chunks(self) -> Iterator[list[tuple[dict[str, Any], Any]]]:
        for batch in self._file.iter_batches(batch_size=CHUNK):
            rows = batch.to_pylist()
            yield [(row, (batch, position)) for position, row in enumerate(rows)]

    def write(self, kept: list[Any]) -> None:
        if not kept:
            return
        import pyarrow as pa

        batch = kept[0][0]
        indices = pa.array([position for _, position in kept], type=pa.int64())
        self._writer.write_batch(batch.take(indices))

    def close(self) -> None:
        self._writer.close()


def filter_dataset(
    ledger: ConsentLedger,
    source: Path,
    out: Path,
    *,
    purpose: str | None = None,
    subject_column: str = "subject_id",
    category_column: str | None = "category",
    category: str | None = None,
    as_of: int | None = None,
    at: str | None = None,
    progress: Callable[[int], None] | None = None,
    record: str | None = None,
    record_column: str = "record_id",
    actor: str | None = None,
    recording: Callable[[], None] | None = None,
) -> FilterSummary:
    """Write the eligible records of `source` to `out` (same format); summarise the rest.

    `record` ("NAME@VERSION") also records the build of the kept records, their ids
    taken from `record_column`; `out` is then written only if the build is recorded
    (BuildRefused or Conflict otherwise, with nothing recorded). `recording` is called
    once every row is checked, as the build is being written.
    """
    if (category is None) == (category_column is None):
        raise InvalidInput("give exactly one of a category column or a category", field="category")
    build = None if record is None else parse_build(record, field="--record")
    # Unknown names are the caller's mistake, not a reason to drop every record.
    policy = ledger.current_policy()
    if category is not None:
        # A build's record may fall in several categories (`a|b`, SPEC §7.1).
        for name in category.split(CATEGORY_SEPARATOR) if build is not None else (category,):
            policy.check_category(name, field="--category")
    if purpose is not None:
        policy.check_purpose(purpose, field="--purpose")
    kind = dataset_format(source)
    if dataset_format(out) != kind:
        raise InvalidInput(f"the output must be {kind} like the input", field="--out")
    # The columns that must exist, with the options that name them.
    columns = [(subject_column, "--subject-column"), (category_column, "--category-column")]
    if build is None:
        records = _open_records(kind, source, out)
        _check_columns(records, columns)
        return _filter(
            ledger,
            records,
            purpose=purpose,
            subject_column=subject_column,
            category_column=category_column,
            category=category,
            as_of=as_of,
            at=at,
            progress=progress,
        )
    dataset, version = build
    columns.append((record_column, "--record-column"))
    # Refused before any file is touched if the version is recorded already.
    with ledger.dataset_recorder(
        dataset, version, actor=actor or cli_actor(), purpose=purpose, as_of=as_of, at=at
    ) as recorder:
        # Written beside `out` and renamed onto it once the build is recorded, so that a
        # refused build never leaves a file that looks like the recorded dataset.
        partial = out.with_name(f".{out.name}.{secrets.token_hex(6)}.partial")
        try:
            records = _open_records(kind, source, partial)
            _check_columns(records, columns)
            summary = _record(
                recorder,
                records,
                columns,
                subject_column=subject_column,
                category_column=category_column,
                category=category,
                record_column=record_column,
                progress=progress,
            )
            if recording:
                recording()
            try:
                summary.build = recorder.finish()
            except InvalidInput as exc:
                raise BuildRefused(
                    f"{dataset}@{version} was not recorded and {out.name} not written: {exc}"
                ) from None
            os.replace(partial, out)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
    return summary


def _open_records(kind: str, source: Path, out: Path) -> _Records:
    if kind == "csv":
        return _CsvRecords(source, out)
    if kind == "jsonl":
        return _JsonlRecords(source, out)
    return _ParquetRecords(source, out)


def _check_columns(records: _Records, names: list[tuple[str | None, str]]) -> None:
    """A column the file does not have is a usage error naming the ones it has."""
    columns = records.columns()
    if columns is None:
        return
    for name, option in names:
        if name is not None and name not in columns:
            records.close()
            raise InvalidInput(
                f"the dataset has no column {name!r} (it has {', '.join(columns)})",
                field=option,
            )


def _filter(
    ledger: ConsentLedger,
    records: _Records,
    *,
    purpose: str | None,
    subject_column: str,
    category_column: str | None,
    category: str | None,
    as_of: int | None,
    at: str | None,
    progress: Callable[[int], None] | None,
) -> FilterSummary:
    summary = FilterSummary()
    try:
        for chunk in records.chunks():
            requests = [
                CheckRequest(
                    _text(record.get(subject_column)),
                    category if category_column is None else _text(record.get(category_column)),
                )
                for record, _ in chunk
            ]
            batch = ledger.check_many(
                requests,
                purpose=purpose,
                as_of=as_of if summary.rows == 0 else summary.checked_at,
                at=at if summary.rows == 0 else summary.at,
            )
            if summary.rows == 0:
                summary.checked_at, summary.at = batch.checked_at, batch.at
                summary.policy_version = batch.policy_version
            kept = []
            for (_, raw), result in zip(chunk, batch.results, strict=True):
                if isinstance(result, InvalidInput):
                    summary.dropped[f"invalid {result.field or 'record'}"] += 1
                elif result.eligible:
                    kept.append(raw)
                else:
                    summary.dropped[result.reason] += 1
            records.write(kept)
            summary.rows += len(chunk)
            summary.kept += len(kept)
            if progress:
                progress(summary.rows)
    finally:
        records.close()
    return summary


def _record(
    recorder: BuildRecorder,
    records: _Records,
    columns: list[tuple[str | None, str]],
    *,
    subject_column: str,
    category_column: str | None,
    category: str | None,
    record_column: str,
    progress: Callable[[int], None] | None,
) -> FilterSummary:
    """The filter's loop with the recorder's check: its eligible answers are the kept rows."""
    build = recorder.summary
    summary = FilterSummary(
        checked_at=build.checked_at, at=build.at, policy_version=build.policy_version
    )
    errors = summary.errors
    try:
        for chunk in records.chunks():
            if summary.rows == 0 and records.columns() is None:
                _check_fields(chunk, columns)
            # `line` is the record's number in the file (1 = the first record): a CSV
            # category cell may be `a|b` and a JSON one a list, which the recorder splits.
            items = [
                BuildItem(
                    line,
                    _record_id(record.get(record_column)),
                    _text(record.get(subject_column)),
                    category if category_column is None else record.get(category_column),
                )
                for line, (record, _) in enumerate(chunk, summary.rows + 1)
            ]
            kept = []
            for (_, raw), answer in zip(chunk, recorder.check(items), strict=True):
                if isinstance(answer, ItemError):
                    summary.dropped[f"invalid {answer.error.field or 'record'}"] += 1
                    if len(errors) < SHOWN_ERRORS:
                        errors.append(answer)
                elif answer.eligible:
                    kept.append(raw)
                else:
                    summary.dropped[answer.reason] += 1
            records.write(kept)
            summary.rows += len(chunk)
            summary.kept += len(kept)
            if progress:
                progress(summary.rows)
    finally:
        records.close()
    return summary


def _check_fields(
    chunk: list[tuple[dict[str, Any], Any]], names: list[tuple[str | None, str]]
) -> None:
    """Records without a header (JSONL): a field that no record of the first chunk has is
    taken for a misspelt column, since a build recorded full of errors cannot be undone."""
    seen: set[str] = set().union(*(record.keys() for record, _ in chunk))
    for name, option in names:
        if name is not None and name not in seen:
            raise InvalidInput(
                f"no record among the first {len(chunk)} has a field {name!r} (they have "
                f"{', '.join(sorted(seen)) or 'none'})",
                field=option,
            )


def _text(value: Any) -> Any:
    # CSV gives strings already; JSON and Parquet ids may be numbers.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _record_id(value: Any) -> Any:
    # An empty cell is a record without an id (an error on its row), not a malformed id
    # (which refuses the whole build).
    return None if value == "" else _text(value)
