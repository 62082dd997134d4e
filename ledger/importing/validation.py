"""Pass 1 of an import: every row validated once (`RowValidator`, a memoised fast path
that agrees with `parse_record`), each good row's fields spooled (`spool_fields`), and
rows naming erased subjects refused."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Engine, select
from sqlmodel import col

from ledger.consent.decisions import validate_decision
from ledger.consent.policy import Policy
from ledger.consent.subjects import erased_id_hash, validate_jurisdiction, validate_subject_id
from ledger.errors import InvalidInput
from ledger.importing.fields import FIELDS, is_blank, parse_boolean
from ledger.importing.rows import ImportRecord, RowError, decision_request, parse_record
from ledger.importing.spool import Spool
from ledger.store.db import in_chunks, read_session
from ledger.store.schema import ErasedSubject
from ledger.timestamps import format_timestamp, normalize_timestamp, utc_now


class ImportRejected(InvalidInput):
    """The file has bad rows; nothing was written. `errors` names every one."""

    def __init__(self, errors: list[RowError], total: int) -> None:
        shown = "\n".join(str(error) for error in errors[:50])
        more = f"\n… and {len(errors) - 50} more" if len(errors) > 50 else ""
        super().__init__(
            f"{len(errors)} of {total} rows are invalid; nothing was imported:\n{shown}{more}"
        )
        self.errors = errors


def spool_fields(record: ImportRecord) -> list[Any]:
    """A validated record as the spool keeps it (see `Spool.__iter__`), less its position."""
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
        jurisdiction_given = not is_blank(jurisdiction_value)
        jurisdiction = self._jurisdiction(jurisdiction_value) if jurisdiction_given else None
        fields: list[Any] = [
            line,
            subject_id,
            jurisdiction,
            jurisdiction_given,
            parse_boolean(get("minor"), "minor"),
        ]
        decision_value = get("decision")
        if is_blank(decision_value):
            if any(not is_blank(get(name)) for name in _SHAPE) or not (
                is_blank(get("effective")) and is_blank(get("expires"))
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
        if not is_blank(effective_value):
            if type(effective_value) is not str:
                return None
            effective = normalize_timestamp(effective_value.strip(), field="row.effective")
        if not is_blank(expires_value):
            if type(expires_value) is not str:
                return None
            expires = normalize_timestamp(expires_value.strip(), field="row.expires")
            if expires <= (now if effective is None else effective):
                return None
        fields += shape
        fields += (effective, expires)
        return fields

    def _shape(self, key: tuple[Any, ...]) -> tuple[Any, ...]:
        given = {
            name: value for name, value in zip(_SHAPE, key, strict=True) if not is_blank(value)
        }
        request = decision_request(given.get("decision"), given)
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


ErasedCheck = Callable[[list[tuple[int, str, dict[str, Any]]]], list[RowError]]


class Validation:
    """Pass 1's work on parsed rows: validate each, spool the good ones, and reject rows
    naming erased subjects, a batch of ids at a time."""

    def __init__(self, policy: Policy, spool: Spool, erased_rows: ErasedCheck) -> None:
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


def erased_rows(
    engine: Engine, erasure_secret: bytes, rows: list[tuple[int, str, dict[str, Any]]]
) -> list[RowError]:
    """An error for each of `rows` (line, subject id, raw row) that names an erased subject."""
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
