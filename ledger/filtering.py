"""Filtering a training dataset down to the records its subjects allow.

A dataset file (CSV with a header, JSONL, or Parquet with the `parquet` extra)
streams through in chunks; every chunk is checked in one `check_many` at the
same tree size and time, so the output is reproducible with `as_of`/`at`, and
memory stays constant however large the file. Kept records are written
unchanged and in their original order.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import orjson

from ledger.errors import InvalidInput
from ledger.service import CheckRequest, ConsentLedger

CHUNK = 10_000


@dataclass
class FilterSummary:
    rows: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    checked_at: int = 0
    at: str = ""
    policy_version: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "checked_at": self.checked_at,
            "at": self.at,
            "policy_version": self.policy_version,
        }


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
) -> FilterSummary:
    """Write the eligible records of `source` to `out` (same format); summarise the rest."""
    if (category is None) == (category_column is None):
        raise InvalidInput("give exactly one of a category column or a category", field="category")
    # Unknown names are the caller's mistake, not a reason to drop every record.
    policy = ledger.current_policy()
    if category is not None:
        policy.check_category(category, field="--category")
    if purpose is not None:
        policy.check_purpose(purpose, field="--purpose")
    kind = dataset_format(source)
    if dataset_format(out) != kind:
        raise InvalidInput(f"the output must be {kind} like the input", field="--out")
    records: _Records
    if kind == "csv":
        records = _CsvRecords(source, out)
    elif kind == "jsonl":
        records = _JsonlRecords(source, out)
    else:
        records = _ParquetRecords(source, out)
    columns = records.columns()
    if columns is not None:
        for name, option in (
            (subject_column, "--subject-column"),
            (category_column, "--category-column"),
        ):
            if name is not None and name not in columns:
                records.close()
                raise InvalidInput(
                    f"the dataset has no column {name!r} (it has {', '.join(columns)})",
                    field=option,
                )
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


def _text(value: Any) -> Any:
    # CSV gives strings already; JSON and Parquet ids may be numbers.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value
