"""Bulk import of subject registrations and consent decisions from CSV or JSONL.

Two streaming passes, in constant memory:
1. read and validate every row once (and compute the file's SHA-256, its
   import id), keeping each good row's validated fields in a spool on disk;
   with any bad row nothing is written, unless the caller chose to skip them;
2. write the spooled rows in batches, one transaction and one checkpoint per
   batch, recording in the same transaction how many rows are done.
An interrupted import (Ctrl-C, SIGKILL) resumes after its last committed
batch; importing a finished file again adds nothing.
"""

from __future__ import annotations

import csv
import hashlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import Engine, insert, select, text, update
from sqlalchemy.orm import Session
from sqlmodel import col

from ledger.consents import DEFAULT_PURPOSE, DecisionRequest, validate_decision
from ledger.db import bulk_insert, is_sqlite, read_session, write_session
from ledger.errors import InvalidInput
from ledger.log import LogWriter, tree_size
from ledger.notes import NoteSigner
from ledger.policy import Policy
from ledger.projection import Projector, SubjectRow
from ledger.schema import ErasedSubject, ImportProgress, SubjectMapping, SubjectVersion
from ledger.subjects import (
    commitment,
    erased_id_hash,
    new_salt,
    new_subject_ref,
    validate_jurisdiction,
    validate_subject_id,
)
from ledger.timestamps import format_timestamp, normalize_timestamp, utc_now

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
SQLITE_CACHE_KIB = 64 * 1024


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
    # The decision's `consent.recorded` data (without `subject`), once validated.
    data: dict[str, Any] | None = None


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
    """A text stream that hashes the bytes it reads: the import id costs no extra pass."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()

    def __iter__(self) -> Iterator[str]:
        for number, line in enumerate(self._handle, start=1):
            self.digest.update(line)
            try:
                # utf-8-sig on the first line: spreadsheets start CSV files with a BOM.
                yield line.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(
                    f"not valid UTF-8 (byte {exc.start + 1}); save the file as UTF-8",
                    field=f"line {number}",
                ) from None


def read_rows(path: Path, reader: _HashingReader) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row with normalised field names) for every data row."""
    if detect_format(path) == "csv":
        rows = csv.reader(reader)
        header = next(rows, None)
        if header is None:
            return
        names = [_field_name(name) for name in header]
        for values in rows:
            if not values:
                continue
            if len(values) != len(names):
                yield (
                    rows.line_num,
                    {"__error__": f"has {len(values)} fields but the header has {len(names)}"},
                )
                continue
            yield rows.line_num, dict(zip(names, values, strict=True))
        return
    for number, line in enumerate(reader, start=1):
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
    data = None
    if check_decision:
        if now is None:
            now = format_timestamp(utc_now())
        data = validate_decision(request, policy, now=now, field="row")
    return ImportRecord(
        line, subject_id, jurisdiction, jurisdiction_value is not None, minor, request, data
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
        data = record.data
        assert data is not None, "spooled records are validated"
        fields += (
            data["category"],
            data["purpose"],
            data["decision"],
            data["explicit"],
            data["method"],
            data["notice"],
            # None: the time of the append, as for any decision without one.
            None if record.decision.effective is None else data["effective"],
            data["expires"],
        )
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
        data = validate_decision(request, self._policy, now="", field="row")
        return tuple(data[name] for name in _SHAPE)

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

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(buffering=1 << 20)

    def __enter__(self) -> _Spool:
        return self

    def __exit__(self, *_exc: object) -> None:
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
) -> ImportSummary:
    if batch_size < 1:
        raise InvalidInput("must be at least 1", field="batch_size")
    with _Spool() as spool:
        # 1. Validate everything, hashing the file as it streams by.
        errors: list[RowError] = []
        total = 0
        ids_to_check: list[tuple[int, str, dict[str, Any]]] = []
        now = format_timestamp(utc_now())
        validator = RowValidator(context.policy)
        with path.open("rb") as handle:
            reader = _HashingReader(handle)
            for line, raw in read_rows(path, reader):
                total += 1
                try:
                    fields = validator.spool_fields(line, raw, now)
                except InvalidInput as exc:
                    errors.append(RowError(line, exc.field, str(exc.args[0]), raw))
                    continue
                spool.add(total, fields)
                ids_to_check.append((line, fields[1], raw))
                if len(ids_to_check) >= batch_size:
                    errors.extend(_erased_rows(context, ids_to_check))
                    ids_to_check = []
                    now = format_timestamp(utc_now())
            errors.extend(_erased_rows(context, ids_to_check))
            import_id = reader.digest.hexdigest()
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
        batch: list[list[Any]] = []
        for row in spool:
            position = row[0]
            if position <= skip or row[1] in bad_lines:
                continue
            batch.append(row)
            if len(batch) >= batch_size:
                _write_batch(context, import_id, batch, position, summary, finished=False)
                batch = []
                if progress:
                    progress(position)
    _write_batch(context, import_id, batch, total, summary, finished=True)
    if progress:
        progress(total)
    return summary


def _erased_rows(
    context: ImportContext, rows: list[tuple[int, str, dict[str, Any]]]
) -> list[RowError]:
    if not rows:
        return []
    by_id: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for line, subject_id, raw in rows:
        by_id.setdefault(subject_id, []).append((line, raw))
    errors = []
    with read_session(context.engine) as session:
        # Erasures are rare: when there are none, no id needs its keyed hash.
        if session.scalar(select(col(ErasedSubject.id_hash)).limit(1)) is None:
            return []
        by_hash = {erased_id_hash(context.erasure_secret, sid): sid for sid in by_id}
        for chunk in _chunks(list(by_hash)):
            for (id_hash,) in session.execute(
                select(col(ErasedSubject.id_hash)).where(col(ErasedSubject.id_hash).in_(chunk))
            ):
                for line, raw in by_id[by_hash[id_hash]]:
                    errors.append(RowError(line, "subject_id", "this subject was erased", raw))
    return errors


def _write_batch(
    context: ImportContext,
    import_id: str,
    batch: list[list[Any]],
    rows_done: int,
    summary: ImportSummary,
    *,
    finished: bool,
) -> None:
    with write_session(context.engine) as session:
        if is_sqlite(context.engine):
            # A batch dirties thousands of pages of the random-key indexes (subject refs);
            # with SQLite's default 2 MB cache they spill to the WAL mid-transaction and
            # are written again. Bounded, and only on the import's connection.
            session.execute(text(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}"))
        if batch:
            writer = LogWriter.open(session, actor=context.actor)
            mappings, latest = _load_batch_subjects(session, batch)
            # A copy: `latest` moves on as rows are appended, the projector starts from the
            # committed versions.
            projector = Projector(dict(latest).get)
            new_mappings: list[tuple[str, str, bytes]] = []
            for row in batch:
                _append_row(writer, row, mappings, latest, new_mappings)
            bulk_insert(session, "subjects", ("subject_id", "ref", "salt"), new_mappings)
            if writer.pending:
                signer = context.signer_for(writer.verifier_key)
                sealed = writer.seal([signer], projector.project)
                summary.entries += len(sealed.entries)
                summary.batches += 1
            summary.imported_rows += len(batch)
        progress_row = session.get(ImportProgress, import_id)
        values = {
            "rows_done": rows_done,
            "entries_written": summary.entries,
            "finished": finished,
        }
        if progress_row is None:
            session.execute(insert(ImportProgress).values(import_id=import_id, **values))
        else:
            session.execute(
                update(ImportProgress)
                .where(col(ImportProgress.import_id) == import_id)
                .values(**values)
            )
        summary.tree_size = tree_size(session)


def _load_batch_subjects(
    session: Session, batch: list[list[Any]]
) -> tuple[dict[str, str], dict[str, SubjectRow]]:
    ids = list({row[2] for row in batch})
    mappings: dict[str, str] = {}
    for chunk in _chunks(ids):
        for subject_id, ref in session.execute(
            select(col(SubjectMapping.subject_id), col(SubjectMapping.ref)).where(
                col(SubjectMapping.subject_id).in_(chunk)
            )
        ):
            mappings[subject_id] = ref
    latest: dict[str, SubjectRow] = {}
    for chunk in _chunks(list(mappings.values())):
        for row in session.execute(
            select(SubjectVersion.__table__).where(  # type: ignore[attr-defined]
                col(SubjectVersion.ref).in_(chunk)
            )
        ).mappings():
            current = latest.get(row["ref"])
            if current is None or row["seq"] > current["seq"]:
                latest[row["ref"]] = dict(row)
    return mappings, latest


def _append_row(
    writer: LogWriter,
    row: list[Any],
    mappings: dict[str, str],
    latest: dict[str, SubjectRow],
    new_mappings: list[tuple[str, str, bytes]],
) -> None:
    """Append a spooled row's entries. Every value in it was validated in pass 1, so the
    entries are vetted (`canonical_bytes` needs no safety walk)."""
    line, subject_id, jurisdiction, jurisdiction_given, minor = row[1:6]
    ref = mappings.get(subject_id)
    if ref is None:
        ref, salt = new_subject_ref(), new_salt()
        mappings[subject_id] = ref
        new_mappings.append((subject_id, ref, salt))
        entry = writer.append(
            "subject.registered",
            {
                "subject": ref,
                "commitment": commitment(salt, subject_id),
                "jurisdiction": jurisdiction,
                "minor": bool(minor),
            },
            vetted=True,
        )
        latest[ref] = {
            "ref": ref,
            "seq": entry.seq,
            "jurisdiction": jurisdiction,
            "minor": bool(minor),
            "erased": False,
        }
    elif len(row) == 6:
        current = latest[ref]
        changed: dict[str, Any] = {}
        if jurisdiction_given and jurisdiction != current["jurisdiction"]:
            changed["jurisdiction"] = jurisdiction
        if minor is not None and minor != current["minor"]:
            changed["minor"] = minor
        if changed:
            entry = writer.append("subject.updated", {"subject": ref, **changed}, vetted=True)
            latest[ref] = {**current, **changed, "seq": entry.seq}
    if len(row) > 6:
        category, purpose, decision, explicit, method, notice, effective, expires = row[6:]
        if effective is None:
            effective = writer.time
            if expires is not None and expires <= effective:
                raise InvalidInput(
                    f"must be later than effective ({effective})", field=f"line {line}, expires"
                )
        writer.append(
            "consent.recorded",
            {
                "subject": ref,
                "category": category,
                "purpose": purpose,
                "decision": decision,
                "explicit": explicit,
                "method": method,
                "notice": notice,
                "effective": effective,
                "expires": expires,
            },
            vetted=True,
        )


def _chunks(items: list[Any], size: int = 900) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
