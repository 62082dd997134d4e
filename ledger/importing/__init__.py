"""Bulk import of subject registrations and consent decisions from CSV or JSONL.

Two streaming passes, in constant memory:
1. read and validate every row once (and compute the file's SHA-256, its
   import id), keeping each good row's validated fields in a spool on disk;
   with any bad row nothing is written, unless the caller chose to skip them;
2. write the spooled rows in batches, one transaction and one checkpoint per
   batch, recording in the same transaction how many rows are done. For a
   large file a second process commits each batch while this one builds the
   next (`_write_pipelined`).
An interrupted import (Ctrl-C, SIGKILL) resumes after its last committed
batch; importing a finished file again adds nothing. Under the write lock a
batch is only written on the head and the progress it was built on, so
nothing another writer appended in between is lost or doubled.
"""

from __future__ import annotations

import csv
import ctypes
import hashlib
import itertools
import os
import pickle
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson
from sqlalchemy import Engine, insert, select, text, update
from sqlalchemy.orm import Session
from sqlmodel import col

from ledger.consent import entries
from ledger.consent.decisions import (
    DEFAULT_PURPOSE,
    ConsentTerms,
    DecisionRequest,
    validate_decision,
)
from ledger.consent.policy import Policy
from ledger.consent.projection import Projector, SubjectRow
from ledger.consent.subjects import (
    RandomPool,
    commitment,
    erased_id_hash,
    validate_jurisdiction,
    validate_subject_id,
)
from ledger.errors import InvalidInput, LedgerError
from ledger.gcpause import no_gc
from ledger.store.db import bulk_insert, in_chunks, make_engine, read_session, write_session
from ledger.store.schema import (
    ErasedSubject,
    ImportProgress,
    LedgerState,
    SubjectMapping,
    SubjectVersion,
)
from ledger.timestamps import format_timestamp, normalize_timestamp, utc_now
from ledger.tlog.log import LogHead, LogWriter, PreparedAppend, read_head, tree_size, write_prepared
from ledger.tlog.notes import NoteSigner

FIELDS = (
    "subject_id",
    "jurisdiction",
    "minor",
    "category",
    "purpose",
    "decision",
    "explicit",
    "effective",
    "expires",
    "method",
    "notice",
)
# The spellings people actually use in exports, mapped onto ours.
FIELD_ALIASES = {
    "subject": "subject_id",
    "subjectid": "subject_id",
    "user_id": "subject_id",
    "userid": "subject_id",
    "user": "subject_id",
    "id": "subject_id",
    "country": "jurisdiction",
    "is_minor": "minor",
    "data_category": "category",
    "consent": "decision",
    "status": "decision",
    "effective_at": "effective",
    "expires_at": "expires",
    "notice_version": "notice",
}
DECISION_ALIASES = {
    "granted": "granted",
    "grant": "granted",
    "denied": "denied",
    "deny": "denied",
    "refused": "denied",
    "withdrawn": "withdrawn",
    "withdraw": "withdrawn",
}
_TRUE = {"true", "yes", "y", "1", "t"}
_FALSE = {"false", "no", "n", "0", "f"}
DEFAULT_METHOD = "import"
DEFAULT_BATCH = 5_000
# Files from this size on are imported with a writer process (`_WriterProcess`).
PIPELINE_BYTES = 1 << 20
# Where pass 1 splits such a file (see `split_file`), in percent of its size.
SPLIT_PERCENT = 56
# The import connection's SQLite page cache: a batch's index pages stay in memory until it
# commits (with refs in time order they are few: 32 MB did as well as 64 at 1M rows).
SQLITE_CACHE_KIB = 32 * 1024


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    field: str | None
    message: str
    raw: dict[str, Any]

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", {self.field}" if self.field else "")
        return f"{where}: {self.message}"


class ImportRejected(InvalidInput):
    """The file has bad rows; nothing was written. `errors` names every one."""

    def __init__(self, errors: list[RowError], total: int) -> None:
        shown = "\n".join(str(error) for error in errors[:50])
        more = f"\n… and {len(errors) - 50} more" if len(errors) > 50 else ""
        super().__init__(
            f"{len(errors)} of {total} rows are invalid; nothing was imported:\n{shown}{more}"
        )
        self.errors = errors


@dataclass(frozen=True, slots=True)
class ImportRecord:
    line: int
    subject_id: str
    jurisdiction: str | None
    jurisdiction_given: bool
    minor: bool | None
    decision: DecisionRequest | None
    # The decision's terms, once validated.
    terms: ConsentTerms | None = None


@dataclass
class ImportSummary:
    import_id: str
    rows: int = 0
    invalid: int = 0
    imported_rows: int = 0
    entries: int = 0
    batches: int = 0
    skipped_already_done: int = 0
    already_imported: bool = False
    tree_size: int = 0
    errors: list[RowError] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "import_id": self.import_id,
            "rows": self.rows,
            "invalid": self.invalid,
            "imported_rows": self.imported_rows,
            "entries": self.entries,
            "batches": self.batches,
            "resumed_after_rows": self.skipped_already_done,
            "already_imported": self.already_imported,
            "tree_size": self.tree_size,
        }


# --- reading ---------------------------------------------------------------------------------


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    with path.open("rb") as handle:
        head = handle.read(4096).lstrip()
    return "jsonl" if head.startswith(b"{") else "csv"


class _HashingReader:
    """A text stream that hashes the bytes it reads: the import id costs no extra pass.

    It reads from where `handle` is, numbering lines from `first_line`, and stops after
    `limit` bytes (at a line boundary) if given.
    """

    def __init__(self, handle: IO[bytes], *, first_line: int = 1, limit: int | None = None):
        self._handle = handle
        self._start = handle.tell()
        self.first_line = first_line
        self._limit = limit
        self.digest = hashlib.sha256()

    def __iter__(self) -> Iterator[str]:
        left = self._limit
        for number, line in enumerate(self._handle, start=self.first_line):
            self.digest.update(line)
            try:
                # utf-8-sig on the first line: spreadsheets start CSV files with a BOM.
                yield line.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(
                    f"not valid UTF-8 (byte {exc.start + 1}); save the file as UTF-8",
                    field=f"line {number}",
                ) from None
            if left is not None:
                left -= len(line)
                if left <= 0:
                    return

    def hash_rest(self) -> None:
        """Hash what is left of the file after the limit, without reading it as text."""
        assert self._limit is not None, "only a limited reader leaves a rest"
        self._handle.seek(self._start + self._limit)
        while chunk := self._handle.read(1 << 20):
            self.digest.update(chunk)


def read_rows(
    path: Path, reader: _HashingReader, names: list[str] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row with normalised field names) for every data row. `names`: the
    header's, when `reader` starts after it (a part of the file)."""
    if detect_format(path) == "csv":
        rows = csv.reader(reader)
        if names is None:
            header = next(rows, None)
            if header is None:
                return
            names = [_field_name(name) for name in header]
        before = reader.first_line - 1
        for values in rows:
            if not values:
                continue
            if len(values) != len(names):
                yield (
                    before + rows.line_num,
                    {"__error__": f"has {len(values)} fields but the header has {len(names)}"},
                )
                continue
            yield before + rows.line_num, dict(zip(names, values, strict=True))
        return
    for number, line in enumerate(reader, start=reader.first_line):
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield number, {"__error__": f"not valid JSON: {exc}"}
            continue
        if not isinstance(value, dict):
            yield number, {"__error__": "each line must be a JSON object"}
            continue
        yield number, {_field_name(str(key)): item for key, item in value.items()}


@dataclass(frozen=True, slots=True)
class FilePart:
    """Where the second half of a file starts, for a second process to validate it:
    `offset` bytes in, at line `first_line`, after a header of `names` (CSV)."""

    offset: int
    first_line: int
    names: list[str] | None


def split_file(path: Path) -> FilePart | None:
    """A line boundary past the middle of the file that is surely a row boundary, or None.

    JSON Lines break only at newlines. A CSV row can span lines inside quotes, so a CSV
    file with any quote before the split point is not split (exports rarely quote).
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        # Past the middle: the writer process starts its half later (its own start-up),
        # and should not keep this one waiting.
        handle.seek(size * SPLIT_PERCENT // 100)
        handle.readline()
        offset = handle.tell()
        if offset >= size:
            return None
        handle.seek(0)
        head = handle.read(offset)
    first_line = head.count(b"\n") + 1
    if detect_format(path) == "jsonl":
        return FilePart(offset, first_line, None)
    if b'"' in head or b"\r" in head.replace(b"\r\n", b""):
        return None
    try:
        header = next(csv.reader([head[: head.index(b"\n")].decode("utf-8-sig")]), None)
    except UnicodeDecodeError:
        return None  # the file is refused as it is read
    if header is None:
        return None
    return FilePart(offset, first_line, [_field_name(name) for name in header])


def _field_name(name: str | None) -> str:
    key = (name or "").strip().lower().replace("-", "_").replace(" ", "_")
    return FIELD_ALIASES.get(key, key)


def _blank(value: Any) -> bool:
    # `not value.strip()` without building the stripped copy.
    return value is None or (isinstance(value, str) and (not value or value.isspace()))


def _boolean(value: Any, name: str) -> bool | None:
    if _blank(value):
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidInput(f"expected true or false, got {value!r}", field=name)


def parse_record(
    line: int,
    raw: dict[str, Any],
    policy: Policy,
    *,
    check_decision: bool = True,
    now: str | None = None,
) -> ImportRecord:
    """Validate one row; InvalidInput names the field. Defaults are filled in here.

    With `check_decision` the decision is validated against the policy (its
    effective time defaulting to `now`, the current time if not given) and
    the result is the record's `data`.
    """
    if "__error__" in raw:
        raise InvalidInput(str(raw["__error__"]))
    unknown = [name for name in raw if name not in FIELDS and not name.startswith("_")]
    if unknown:
        raise InvalidInput(f"unknown column(s) {', '.join(unknown)}", field=unknown[0])
    # Only the values that are not blank (as `_blank`, inline: this runs for every row).
    given = {
        name: value
        for name, value in raw.items()
        if value is not None and not (isinstance(value, str) and (not value or value.isspace()))
    }
    subject_value = given.get("subject_id")
    if subject_value is None:
        raise InvalidInput("is required", field="subject_id")
    subject_id = validate_subject_id(str(subject_value).strip())
    jurisdiction_value = given.get("jurisdiction")
    jurisdiction = None if jurisdiction_value is None else validate_jurisdiction(jurisdiction_value)
    minor = _boolean(given.get("minor"), "minor")
    decision_value = given.get("decision")
    if decision_value is None:
        for name in ("category", "explicit", "effective", "expires", "notice"):
            if name in given:
                raise InvalidInput(f"{name} given without a decision", field="decision")
        return ImportRecord(
            line, subject_id, jurisdiction, jurisdiction_value is not None, minor, None
        )
    request = _decision_request(decision_value, given)
    terms = None
    if check_decision:
        if now is None:
            now = format_timestamp(utc_now())
        terms = validate_decision(request, policy, now=now, field="row")
    return ImportRecord(
        line, subject_id, jurisdiction, jurisdiction_value is not None, minor, request, terms
    )


def _decision_request(decision_value: Any, given: dict[str, Any]) -> DecisionRequest:
    """A row's decision as a request, from its non-blank fields (`given`), defaults filled in."""
    decision = DECISION_ALIASES.get(str(decision_value).strip().lower())
    if decision is None:
        raise InvalidInput(
            f"must be granted, denied or withdrawn, got {decision_value!r}", field="decision"
        )
    if "category" not in given:
        raise InvalidInput("is required with a decision", field="category")
    purpose, method, notice = given.get("purpose"), given.get("method"), given.get("notice")
    effective, expires = given.get("effective"), given.get("expires")
    return DecisionRequest(
        category=str(given["category"]).strip(),
        decision=decision,
        purpose=DEFAULT_PURPOSE if purpose is None else str(purpose).strip(),
        explicit=_boolean(given.get("explicit"), "explicit") or False,
        method=DEFAULT_METHOD if method is None else str(method).strip(),
        notice=None if notice is None else str(notice),
        effective=None if effective is None else str(effective).strip(),
        expires=None if expires is None else str(expires).strip(),
    )


def spool_fields(record: ImportRecord) -> list[Any]:
    """A validated record as the spool keeps it (see `_Spool.__iter__`), less its position."""
    fields: list[Any] = [
        record.line,
        record.subject_id,
        record.jurisdiction,
        record.jurisdiction_given,
        record.minor,
    ]
    if record.decision is not None:
        terms = record.terms
        assert terms is not None, "spooled records are validated"
        fields += terms[:-2]
        # None: the time of the append, as for any decision without one.
        fields += (None if record.decision.effective is None else terms.effective, terms.expires)
    return fields


# The fields of a decision that repeat from row to row (the rest: subject and times).
_SHAPE = ("category", "purpose", "decision", "explicit", "method", "notice")
_KNOWN_FIELDS = frozenset(FIELDS)
# Distinct shapes remembered at most: a file with a different notice on every row must
# not grow the memo without bound.
_MAX_SHAPES = 16_384


class RowValidator:
    """`parse_record` for a stream of rows, answering with the spool's fields.

    An import validates every row, and its rows repeat the same few categories,
    purposes, methods and notices: each distinct combination is validated once.
    Only plain rows take that path (strings, booleans, blanks; known columns); any
    other row, and any row the path finds a fault in, goes to `parse_record`, so
    that what is accepted and every error message are exactly its own
    (`tests/test_import.py` checks the two agree).
    """

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._shapes: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._jurisdictions: dict[Any, str | None] = {}

    def spool_fields(self, line: int, raw: dict[str, Any], now: str) -> list[Any]:
        try:
            fields = self._plain(line, raw, now)
        except InvalidInput:
            fields = None
        if fields is None:
            return spool_fields(parse_record(line, raw, self._policy, now=now))
        return fields

    def _plain(self, line: int, raw: dict[str, Any], now: str) -> list[Any] | None:
        if not _KNOWN_FIELDS.issuperset(raw):
            return None
        for value in raw.values():
            if not (type(value) is str or type(value) is bool or value is None):
                return None
        get = raw.get
        subject = get("subject_id")
        if type(subject) is not str:
            return None
        subject_id = validate_subject_id(subject.strip())
        jurisdiction_value = get("jurisdiction")
        jurisdiction_given = not _blank(jurisdiction_value)
        jurisdiction = self._jurisdiction(jurisdiction_value) if jurisdiction_given else None
        fields: list[Any] = [
            line,
            subject_id,
            jurisdiction,
            jurisdiction_given,
            _boolean(get("minor"), "minor"),
        ]
        decision_value = get("decision")
        if _blank(decision_value):
            if any(not _blank(get(name)) for name in _SHAPE) or not (
                _blank(get("effective")) and _blank(get("expires"))
            ):
                return None
            return fields
        key = tuple(map(get, _SHAPE))
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shape(key)
            if len(self._shapes) >= _MAX_SHAPES:
                self._shapes.clear()
            self._shapes[key] = shape
        effective_value, expires_value = get("effective"), get("expires")
        effective = expires = None
        if not _blank(effective_value):
            if type(effective_value) is not str:
                return None
            effective = normalize_timestamp(effective_value.strip(), field="row.effective")
        if not _blank(expires_value):
            if type(expires_value) is not str:
                return None
            expires = normalize_timestamp(expires_value.strip(), field="row.expires")
            if expires <= (now if effective is None else effective):
                return None
        fields += shape
        fields += (effective, expires)
        return fields

    def _shape(self, key: tuple[Any, ...]) -> tuple[Any, ...]:
        given = {name: value for name, value in zip(_SHAPE, key, strict=True) if not _blank(value)}
        request = _decision_request(given.get("decision"), given)
        # No times in the request: validate_decision's `now` does not reach the shape.
        terms = validate_decision(request, self._policy, now="", field="row")
        return tuple(getattr(terms, name) for name in _SHAPE)

    def _jurisdiction(self, value: Any) -> str | None:
        code = self._jurisdictions.get(value)
        if code is None:
            code = validate_jurisdiction(value)
            if len(self._jurisdictions) < _MAX_SHAPES:
                self._jurisdictions[value] = code
        return code


class _Spool:
    """Pass 1's validated rows, for pass 2 to write without parsing them again.

    One compact JSON array a row in an anonymous temporary file (gone even
    after SIGKILL), so memory stays constant whatever the size of the file;
    the spool is about as large as the file.
    """

    def __init__(self, file: IO[bytes] | None = None) -> None:
        # `file`: the writer process's handle on its importer's spool (see `_Validation`).
        self._file = tempfile.TemporaryFile(buffering=1 << 20) if file is None else file

    def __enter__(self) -> _Spool:
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


ErasedCheck = Callable[[list[tuple[int, str, dict[str, Any]]]], list[RowError]]


class _Validation:
    """Pass 1's work on parsed rows: validate each, spool the good ones, and reject rows
    naming erased subjects, a batch of ids at a time."""

    def __init__(self, policy: Policy, spool: _Spool, erased_rows: ErasedCheck) -> None:
        self._validator = RowValidator(policy)
        self._spool = spool
        self._erased_rows = erased_rows
        self._errors: list[RowError] = []

    def add_rows(self, rows: Iterable[tuple[int, dict[str, Any]]], batch_size: int) -> int:
        """Validate (line, row) for each row, in file order; how many rows there were."""
        spool_fields, spool, errors = self._validator.spool_fields, self._spool, self._errors
        position = 0
        ids: list[tuple[int, str, dict[str, Any]]] = []
        now = format_timestamp(utc_now())
        for line, raw in rows:
            position += 1
            try:
                fields = spool_fields(line, raw, now)
            except InvalidInput as exc:
                errors.append(RowError(line, exc.field, str(exc.args[0]), raw))
                continue
            spool.add(position, fields)
            ids.append((line, fields[1], raw))
            if len(ids) >= batch_size:
                errors.extend(self._erased_rows(ids))
                ids = []
                now = format_timestamp(utc_now())
        errors.extend(self._erased_rows(ids))
        return position

    def finish(self) -> list[RowError]:
        self._spool.flush()
        return self._errors


# --- the import --------------------------------------------------------------------------


Progress = Callable[[int], None]


@dataclass
class ImportContext:
    """What an import needs from the ledger: its database, policy, keys and actor."""

    engine: Engine
    policy: Policy
    # The signer for the key the log expects now (it may have been rotated).
    signer_for: Callable[[str], NoteSigner]
    erasure_secret: bytes
    actor: str


def import_file(
    context: ImportContext,
    path: Path,
    *,
    batch_size: int = DEFAULT_BATCH,
    skip_invalid: bool = False,
    on_reject: Callable[[RowError], None] | None = None,
    progress: Progress | None = None,
    pipeline: bool | None = None,
) -> ImportSummary:
    """Import `path` (see the module docstring). `pipeline`: with a writer process,
    which validates part of the file and commits each batch while this one prepares
    the next (None: for files of `PIPELINE_BYTES` or more, unless the database is in
    memory)."""
    if batch_size < 1:
        raise InvalidInput("must be at least 1", field="batch_size")
    if pipeline is None:
        pipeline = path.stat().st_size >= PIPELINE_BYTES and _WriterProcess.can_write(
            context.engine
        )
    # Every row makes a few short-lived dicts and tuples: the collections they would
    # trigger rescan everything else alive, for nothing (a sixth of an import's time).
    with (
        no_gc(),
        _Spool() as spool,
        _WriterProcess(context.engine) if pipeline else nullcontext() as helper,
    ):
        # 1. Validate everything, hashing the file as it streams by. With a writer
        # process, that process validates the second half of the file meanwhile.
        part = split_file(path) if helper is not None else None
        second = None
        if helper is not None and part is not None:
            second = helper.validate(context, path, part)
        validation = _Validation(
            context.policy, spool, partial(_erased_rows, context.engine, context.erasure_secret)
        )
        with path.open("rb") as handle:
            reader = _HashingReader(handle, limit=None if part is None else part.offset)
            total = validation.add_rows(read_rows(path, reader), batch_size)
            if part is not None:
                reader.hash_rest()
            import_id = reader.digest.hexdigest()
        errors = validation.finish()
        rows_first = total
        if helper is not None and part is not None:
            more_errors, more_rows = helper.validated()
            errors += more_errors
            total += more_rows
        errors.sort(key=lambda error: error.line)
        summary = ImportSummary(import_id=import_id, rows=total, invalid=len(errors))
        if errors and not skip_invalid:
            raise ImportRejected(errors, total)
        if on_reject is not None:
            for error in errors:
                on_reject(error)
        summary.errors = errors
        bad_lines = {error.line for error in errors}

        # 2. Write, resuming after the last committed batch of an earlier attempt.
        with read_session(context.engine) as session:
            done = session.get(ImportProgress, import_id)
        if done is not None and done.finished:
            summary.already_imported = True
            with read_session(context.engine) as session:
                summary.tree_size = tree_size(session)
            return summary
        skip = done.rows_done if done is not None else 0
        summary.skipped_already_done = skip
        spooled: Iterable[list[Any]] = spool
        if second is not None:
            spooled = itertools.chain(spool, _renumbered(second, rows_first))
        batches = _batches(spooled, skip, bad_lines, batch_size, total)
        if helper is not None:
            _write_pipelined(context, import_id, batches, summary, progress, helper)
        else:
            for batch in batches:
                _write_batch(context, import_id, batch, summary)
                if progress:
                    progress(batch.end)
    return summary


def _erased_rows(
    engine: Engine, erasure_secret: bytes, rows: list[tuple[int, str, dict[str, Any]]]
) -> list[RowError]:
    if not rows:
        return []
    by_id: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for line, subject_id, raw in rows:
        by_id.setdefault(subject_id, []).append((line, raw))
    errors = []
    with read_session(engine) as session:
        # Erasures are rare: when there are none, no id needs its keyed hash.
        if session.scalar(select(col(ErasedSubject.id_hash)).limit(1)) is None:
            return []
        by_hash = {erased_id_hash(erasure_secret, sid): sid for sid in by_id}
        for chunk in in_chunks(list(by_hash)):
            for (id_hash,) in session.execute(
                select(col(ErasedSubject.id_hash)).where(col(ErasedSubject.id_hash).in_(chunk))
            ):
                for line, raw in by_id[by_hash[id_hash]]:
                    errors.append(RowError(line, "subject_id", "this subject was erased", raw))
    return errors


@dataclass(slots=True)
class _Batch:
    rows: list[list[Any]]
    # The rows done before it and after it (spool positions; bad rows count as done).
    start: int
    end: int
    finished: bool


def _renumbered(spool: _Spool, before: int) -> Iterator[list[Any]]:
    """The second half's spool, its positions counted on from the first half's rows."""
    with spool:
        for row in spool:
            row[0] += before
            yield row


def _batches(
    spool: Iterable[list[Any]], skip: int, bad_lines: set[int], batch_size: int, total: int
) -> Iterator[_Batch]:
    rows: list[list[Any]] = []
    start = skip
    for row in spool:
        position = row[0]
        if position <= skip or row[1] in bad_lines:
            continue
        rows.append(row)
        if len(rows) >= batch_size:
            yield _Batch(rows, start, position, finished=False)
            rows, start = [], position
    yield _Batch(rows, start, total, finished=True)


@dataclass(frozen=True, slots=True)
class _PreparedBatch:
    """A batch ready to be written: plain values, picklable for the writer process."""

    import_id: str
    start: int
    end: int
    finished: bool
    base: LogHead
    mappings: list[tuple[str, str, bytes]]
    append: PreparedAppend | None
    rows: int
    entries: int
    # This import's entries once the batch has landed (recorded in its progress row).
    entries_written: int

    @property
    def appended(self) -> bool:
        return self.append is not None


SubjectsKnown = tuple[dict[str, str], dict[str, SubjectRow]]
V = TypeVar("V")


def _prepare_batch(
    context: ImportContext,
    import_id: str,
    batch: _Batch,
    head: LogHead,
    known: SubjectsKnown,
    entries_before: int,
    *,
    session: Session | None,
) -> tuple[_PreparedBatch, LogHead]:
    """Build a batch's entries, projections and checkpoint on `head`, without the database.

    `known` is what the database says (or will say, once the batches before this one
    land) of the batch's subjects; it is brought up to date as rows are appended.
    `session`: the write transaction the batch will be written in; without one, the
    batch goes to the writer process with the tree's new nodes, from which it stores
    the Merkle tiles and nodes (see `ledger.tlog.log.write_prepared`).
    """
    mappings, latest = known
    writer = LogWriter.at(
        head,
        actor=context.actor,
        session=session,
        keep_nodes=session is not None,
        subject_of=entries.subject_of,
    )
    # A copy: `latest` moves on as rows are appended, the projector starts from the
    # versions before the batch.
    projector = Projector(dict(latest).get)
    new_mappings: list[tuple[str, str, bytes]] = []
    randomness = RandomPool()  # one per batch: never shared between threads
    for row in batch.rows:
        _append_row(writer, row, mappings, latest, new_mappings, randomness)
    append = None
    if writer.pending:
        append = writer.prepare([context.signer_for(writer.verifier_key)], projector.project)
    appended = writer.next_seq - head.size
    prepared = _PreparedBatch(
        import_id=import_id,
        start=batch.start,
        end=batch.end,
        finished=batch.finished,
        base=head,
        mappings=new_mappings,
        append=append,
        rows=len(batch.rows),
        entries=appended,
        entries_written=entries_before + appended,
    )
    return prepared, writer.head()


def _store_batch(session: Session, prepared: _PreparedBatch) -> int:
    """Write a prepared batch and its progress in the caller's write transaction;
    the tree size after it."""
    bulk_insert(session, "subjects", ("subject_id", "ref", "salt"), prepared.mappings)
    if prepared.append is not None:
        write_prepared(session, prepared.append)
    values = {
        "rows_done": prepared.end,
        "entries_written": prepared.entries_written,
        "finished": prepared.finished,
    }
    if session.get(ImportProgress, prepared.import_id) is None:
        session.execute(insert(ImportProgress).values(import_id=prepared.import_id, **values))
    else:
        session.execute(
            update(ImportProgress)
            .where(col(ImportProgress.import_id) == prepared.import_id)
            .values(**values)
        )
    return prepared.append.tree_size if prepared.append is not None else prepared.base.size


def _tune(session: Session) -> None:
    if session.get_bind().dialect.name == "sqlite":
        # A batch dirties thousands of pages; with SQLite's default 2 MB cache they spill
        # to the WAL mid-transaction and are written again. Only on the import's connection.
        session.execute(text(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}"))


def _landed(summary: ImportSummary, landed: _PreparedBatch | _Sent, size: int) -> None:
    summary.entries += landed.entries
    summary.batches += 1 if landed.appended else 0
    summary.imported_rows += landed.rows
    summary.tree_size = size


def _write_batch(
    context: ImportContext, import_id: str, batch: _Batch, summary: ImportSummary
) -> None:
    """Write one batch in this process, building it under the write lock."""
    with write_session(context.engine) as session:
        _tune(session)
        done = session.get(ImportProgress, import_id)
        done_rows = done.rows_done if done is not None else 0
        if done is not None and (done.finished or done_rows >= batch.end > batch.start):
            # Another writer of this file got here first (the pipeline's writer process,
            # finishing the batch it had when its import was stopped).
            summary.tree_size = tree_size(session)
            return
        # Under the lock, rows already written are never written again.
        rows = [row for row in batch.rows if row[0] > done_rows]
        batch = _Batch(rows, max(batch.start, done_rows), batch.end, batch.finished)
        prepared, _ = _prepare_batch(
            context,
            import_id,
            batch,
            read_head(session),
            _load_batch_subjects(session, rows),
            summary.entries,
            session=session,
        )
        size = _store_batch(session, prepared)
    _landed(summary, prepared, size)


# Batches left unanswered while the next one is prepared: one being written and one
# queued behind it, so that neither process waits for the other on every batch.
IN_FLIGHT = 2


@dataclass(frozen=True, slots=True)
class _Sent:
    """A batch sent to the writer: what rebuilding it and counting it take."""

    batch: _Batch
    entries: int
    rows: int
    appended: bool
    # What the batch says of its subjects once written (for the batches after it).
    known: SubjectsKnown


def _write_pipelined(
    context: ImportContext,
    import_id: str,
    batches: Iterator[_Batch],
    summary: ImportSummary,
    progress: Progress | None,
    writer: _WriterProcess,
) -> None:
    """Prepare each batch while a writer process commits the ones before.

    Each batch is built on the head the batches in flight will leave, and on what
    they and the database say of its subjects. The writer commits it only if, under
    the write lock, the log's head and this import's progress are exactly what it was
    built on; when anything else wrote in between, the batches in flight are built
    again here, under the lock.
    """
    in_flight: deque[_Sent] = deque()
    head: LogHead | None = None
    for batch in batches:
        with read_session(context.engine) as session:
            if head is None:
                head = read_head(session)
            known = _load_batch_subjects(session, batch.rows, _overlay(in_flight))
        entries_before = summary.entries + sum(sent.entries for sent in in_flight)
        prepared, head = _prepare_batch(
            context, import_id, batch, head, known, entries_before, session=None
        )
        writer.send(prepared)
        in_flight.append(_Sent(batch, prepared.entries, prepared.rows, prepared.appended, known))
        if len(in_flight) > IN_FLIGHT and not _finish(
            context, import_id, writer, in_flight, summary, progress
        ):
            head = None
    while in_flight:
        _finish(context, import_id, writer, in_flight, summary, progress)


def _overlay(in_flight: deque[_Sent]) -> SubjectsKnown:
    """What the batches in flight say of their subjects, the latest last."""
    if len(in_flight) == 1:
        return in_flight[0].known
    mappings: dict[str, str] = {}
    latest: dict[str, SubjectRow] = {}
    for sent in in_flight:
        mappings.update(sent.known[0])
        latest.update(sent.known[1])
    return mappings, latest


def _finish(
    context: ImportContext,
    import_id: str,
    writer: _WriterProcess,
    in_flight: deque[_Sent],
    summary: ImportSummary,
    progress: Progress | None,
) -> bool:
    """Wait for the oldest batch in flight. If it was not written (the head had moved),
    neither were those sent after it, built on it (the writer checks this import's
    progress): build them all again, here, under the lock; False then."""
    oldest = in_flight.popleft()
    size = writer.result()
    if size is not None:
        _landed(summary, oldest, size)
        if progress:
            progress(oldest.batch.end)
        return True
    for _ in in_flight:
        if writer.result() is not None:
            raise ImportWriteFailed("the writer process wrote a batch out of order")
    for sent in (oldest, *in_flight):
        _write_batch(context, import_id, sent.batch, summary)
        if progress:
            progress(sent.batch.end)
    in_flight.clear()
    return False


class ImportWriteFailed(LedgerError):
    """The writer process could not write a batch (the batches before it have landed)."""


class _WriterProcess:
    """A child process (`python -m ledger.importing.writer_process`) that commits prepared batches
    (`commit_prepared`), one at a time, answering each with the tree size after it.

    Writing is about half an import's work and this process's other half is pure
    Python: in one process the two take turns, in two they overlap (a thread would
    not do: the SQLite driver takes the GIL back for every row). The child dies with
    this process, so a killed import leaves nothing in flight. Messages are pickles
    over the child's stdin and stdout, the database URL first (never on a command
    line, where `ps` would show its password).
    """

    def __init__(self, engine: Engine) -> None:
        # The child imports this very `ledger`, wherever it was imported from.
        package_root = str(Path(__file__).resolve().parent.parent)
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (package_root, path)))}
        # It spools the rows it validates to a file of ours that has no name: the open
        # file is passed down, under the same descriptor number.
        self._spool = _Spool()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "ledger.importing.writer_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            pass_fds=(self._spool.fileno(),),
        )
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._to_child: IO[bytes] = self._process.stdin
        self._from_child: IO[bytes] = self._process.stdout
        # Messages go out from a thread of their own, in order: a batch is megabytes
        # and the pipe holds 64 KB, and this process goes on while the child reads.
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._broken = False
        self._sender = threading.Thread(target=self._send_all, daemon=True)
        self._sender.start()
        self._put(engine.url.render_as_string(hide_password=False))

    @staticmethod
    def can_write(engine: Engine) -> bool:
        """Whether a second process can reach this database (not an in-memory SQLite)."""
        url = engine.url
        return url.get_backend_name() != "sqlite" or url.database not in (None, "", ":memory:")

    def __enter__(self) -> _WriterProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._spool.close()
        self._outbox.put(None)
        self._sender.join()
        # Closing its stdin tells the child to stop; a batch it is writing still lands.
        try:
            self._to_child.close()
        except BrokenPipeError:
            pass
        try:
            self._process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._from_child.close()

    def _put(self, message: object) -> None:
        if self._broken:
            raise self._stopped()
        self._outbox.put(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    def _send_all(self) -> None:
        while (data := self._outbox.get()) is not None:
            if self._broken:
                continue  # the child is gone: drop the rest
            try:
                self._to_child.write(data)
                self._to_child.flush()
            except (BrokenPipeError, ValueError):  # ValueError: stdin already closed
                self._broken = True

    def validate(self, context: ImportContext, path: Path, part: FilePart) -> _Spool:
        """Have the child validate the `part` of `path` that starts there, meanwhile; its
        good rows go to the spool returned (positions counted from 1)."""
        document = context.policy.to_document()
        self._put(("validate", (document, context.erasure_secret, self._spool.fileno())))
        self._put(("part", (str(path), part)))
        return self._spool

    def validated(self) -> tuple[list[RowError], int]:
        """The part's bad rows and how many rows it had, once all its good ones are spooled."""
        self._put(("validated", None))
        errors, rows = self._reply()
        return errors, int(rows)

    def send(self, prepared: _PreparedBatch) -> None:
        """Queue a batch for the child; its answers come back in order (`result`)."""
        self._put(("write", prepared))

    def result(self) -> int | None:
        """The tree size after the oldest batch not yet answered, or None if it was
        not written (the head had moved)."""
        size: int | None = self._reply()
        return size

    def _reply(self) -> Any:
        try:
            kind, value = pickle.load(self._from_child)
        except EOFError:
            raise self._stopped() from None
        if kind == "failed":
            raise ImportWriteFailed(f"{value}; run the import again to resume")
        return value

    def _stopped(self) -> ImportWriteFailed:
        code = self._process.wait()
        return ImportWriteFailed(
            f"the import's writer process stopped (exit code {code}); "
            "run the import again to resume"
        )


def serve_writer(incoming: IO[bytes], outgoing: IO[bytes]) -> None:
    """The writer process: commit each batch received until its input closes."""
    die_with_parent()
    # Ctrl-C is for the importing process, which stops this one once it has a result.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    engine = make_engine(pickle.load(incoming))
    try:
        _serve(engine, incoming, outgoing)
    finally:
        engine.dispose()


def _serve(engine: Engine, incoming: IO[bytes], outgoing: IO[bytes]) -> None:
    # Unpickling a batch makes tens of thousands of tuples, all freed with it.
    validation: tuple[Policy, bytes, int] | None = None
    validated: tuple[list[RowError], int] | None = None
    with no_gc():
        while True:
            try:
                kind, value = pickle.load(incoming)
            except EOFError:
                return
            try:
                if kind == "validate":
                    document, secret, fd = value
                    validation = (Policy.from_document(document), secret, fd)
                    continue
                if kind == "part":
                    assert validation is not None, "validate comes first"
                    validated = _validate_part(engine, *validation, *value)
                    continue  # the answer waits for "validated"
                if kind == "validated":
                    assert validated is not None, "part comes first"
                    reply: Any = validated
                else:
                    reply = commit_prepared(engine, value)
            except Exception as exc:  # noqa: BLE001 - reported to the importing process
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                pickle.dump(("failed", first), outgoing)
                outgoing.flush()
                return
            pickle.dump(("ok", reply), outgoing, protocol=pickle.HIGHEST_PROTOCOL)
            outgoing.flush()


def _validate_part(
    engine: Engine, policy: Policy, secret: bytes, fd: int, path: str, part: FilePart
) -> tuple[list[RowError], int]:
    """The writer process's share of pass 1: the rows of `path` from `part` on."""
    file = Path(path)
    spool = _Spool(os.fdopen(fd, "wb", buffering=1 << 20, closefd=False))
    validation = _Validation(policy, spool, partial(_erased_rows, engine, secret))
    with file.open("rb") as handle:
        handle.seek(part.offset)
        reader = _HashingReader(handle, first_line=part.first_line)
        rows = validation.add_rows(read_rows(file, reader, part.names), DEFAULT_BATCH)
    return validation.finish(), rows


def commit_prepared(engine: Engine, prepared: _PreparedBatch) -> int | None:
    """Write a batch if the log's head and the import's progress are what it was built
    on (the tree size after it), else nothing (None)."""
    with write_session(engine) as session:
        _tune(session)
        state = session.get(LedgerState, 1)
        done = session.get(ImportProgress, prepared.import_id)
        if (
            state is None
            or (state.tree_size, state.verifier_key)
            != (prepared.base.size, prepared.base.verifier_key)
            or (done.rows_done if done is not None else 0) != prepared.start
            or (done is not None and done.finished)
        ):
            return None
        return _store_batch(session, prepared)


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (elsewhere: best effort,
    the closed pipe stops it at its next batch)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


_PR_SET_PDEATHSIG = 1


def _load_batch_subjects(
    session: Session, batch: list[list[Any]], overlay: SubjectsKnown = ({}, {})
) -> SubjectsKnown:
    """The batch's subjects: their refs and latest versions, from `overlay` (a batch in
    flight) where it knows them, else from the database."""
    overlay_mappings, overlay_latest = overlay
    mappings, ids = _known_and_unknown({row[2] for row in batch}, overlay_mappings)
    for chunk in in_chunks(ids):
        for subject_id, ref in session.execute(
            select(col(SubjectMapping.subject_id), col(SubjectMapping.ref)).where(
                col(SubjectMapping.subject_id).in_(chunk)
            )
        ):
            mappings[subject_id] = ref
    latest, refs = _known_and_unknown(mappings.values(), overlay_latest)
    for chunk in in_chunks(refs):
        for row in session.execute(
            select(SubjectVersion.__table__).where(  # type: ignore[attr-defined]
                col(SubjectVersion.ref).in_(chunk)
            )
        ).mappings():
            current = latest.get(row["ref"])
            if current is None or row["seq"] > current["seq"]:
                latest[row["ref"]] = dict(row)
    return mappings, latest


def _known_and_unknown(keys: Iterable[str], known: dict[str, V]) -> tuple[dict[str, V], list[str]]:
    """The keys `known` has values for (with them), and the others."""
    found: dict[str, V] = {}
    unknown = []
    for key in keys:
        value = known.get(key)
        if value is None:
            unknown.append(key)
        else:
            found[key] = value
    return found, unknown


def _append_row(
    writer: LogWriter,
    row: list[Any],
    mappings: dict[str, str],
    latest: dict[str, SubjectRow],
    new_mappings: list[tuple[str, str, bytes]],
    randomness: RandomPool,
) -> None:
    """Append a spooled row's entries. Every value in it was validated in pass 1, so the
    entries are vetted (`canonical_bytes` needs no safety walk)."""
    line, subject_id, jurisdiction, jurisdiction_given, minor = row[1:6]
    ref = mappings.get(subject_id)
    if ref is None:
        ref, salt = randomness.ref_and_salt()
        mappings[subject_id] = ref
        new_mappings.append((subject_id, ref, salt))
        registered = entries.subject_registered(
            ref, commitment(salt, subject_id), jurisdiction, bool(minor)
        )
        entry = writer.append(*registered, vetted=True)
        latest[ref] = {
            "ref": ref,
            "seq": entry.seq,
            "jurisdiction": jurisdiction,
            "minor": bool(minor),
            "erased": False,
        }
    elif len(row) == 6:
        current = latest[ref]
        changes = entries.subject_changes(
            current, jurisdiction, minor, jurisdiction_given=jurisdiction_given
        )
        if changes:
            entry = writer.append(*entries.subject_updated(ref, changes), vetted=True)
            latest[ref] = {**current, **changes, "seq": entry.seq}
    if len(row) > 6:
        terms = ConsentTerms(*row[6:])
        if terms.effective is None:
            terms = terms._replace(effective=writer.time)
            if terms.expires is not None and terms.expires <= terms.effective:
                raise InvalidInput(
                    f"must be later than effective ({terms.effective})",
                    field=f"line {line}, expires",
                )
        writer.append(*entries.consent_recorded(ref, terms), vetted=True)
