"""Reading an import file (CSV or JSONL) into numbered rows of raw fields, and
`parse_record`: what one valid row is, the reference that pass 1's fast path
(`ledger.importing.validation`) must agree with."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from ledger.consent.decisions import (
    DEFAULT_PURPOSE,
    ConsentTerms,
    DecisionRequest,
    validate_decision,
)
from ledger.consent.policy import Policy
from ledger.consent.subjects import validate_jurisdiction, validate_subject_id
from ledger.errors import InvalidInput
from ledger.importing.fields import (
    DECISION_ALIASES,
    DEFAULT_METHOD,
    FIELDS,
    field_name,
    parse_boolean,
)
from ledger.timestamps import format_timestamp, utc_now

# Where pass 1 splits a file it shares with the writer process (see `split_file`), in
# percent of its size.
SPLIT_PERCENT = 56


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    field: str | None
    message: str
    raw: dict[str, Any]

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", {self.field}" if self.field else "")
        return f"{where}: {self.message}"


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


class HashingReader:
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
    path: Path, reader: HashingReader, names: list[str] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row with normalised field names) for every data row. `names`: the
    header's, when `reader` starts after it (a part of the file)."""
    if detect_format(path) == "csv":
        rows = csv.reader(reader)
        if names is None:
            header = next(rows, None)
            if header is None:
                return
            names = [field_name(name) for name in header]
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
        yield number, {field_name(str(key)): item for key, item in value.items()}


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
    return FilePart(offset, first_line, [field_name(name) for name in header])


# --- one row ---------------------------------------------------------------------------------


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
    # Only the values that are not blank (as `is_blank`, inline: this runs for every row).
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
    minor = parse_boolean(given.get("minor"), "minor")
    decision_value = given.get("decision")
    if decision_value is None:
        for name in ("category", "explicit", "effective", "expires", "notice"):
            if name in given:
                raise InvalidInput(f"{name} given without a decision", field="decision")
        return ImportRecord(
            line, subject_id, jurisdiction, jurisdiction_value is not None, minor, None
        )
    request = decision_request(decision_value, given)
    terms = None
    if check_decision:
        if now is None:
            now = format_timestamp(utc_now())
        terms = validate_decision(request, policy, now=now, field="row")
    return ImportRecord(
        line, subject_id, jurisdiction, jurisdiction_value is not None, minor, request, terms
    )


def decision_request(decision_value: Any, given: dict[str, Any]) -> DecisionRequest:
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
        explicit=parse_boolean(given.get("explicit"), "explicit") or False,
        method=DEFAULT_METHOD if method is None else str(method).strip(),
        notice=None if notice is None else str(notice),
        effective=None if effective is None else str(effective).strip(),
        expires=None if expires is None else str(expires).strip(),
    )
