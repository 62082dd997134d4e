"""A dataset build being recorded (SPEC §7.1): items checked at one tree size and time,
the eligible ones spooled to a temporary SQLite file (a build of millions must not live
in memory), then recorded in one write: the members in record-id byte order, their
leaves, and one `dataset.recorded` entry naming their root.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy.orm import Session

from ledger.consent import entries
from ledger.consent.datasets import (
    MAX_RECORD_ID,
    joined_categories,
    validate_dataset_name,
    validate_record_id,
    validate_version,
)
from ledger.consent.decisions import DEFAULT_PURPOSE
from ledger.consent.eligibility import Eligibility
from ledger.datasets import members as stored
from ledger.datasets import obligations
from ledger.errors import InvalidInput
from ledger.service.views import CheckBatch
from ledger.timestamps import format_timestamp, utc_now
from ledger.tlog.evidence import EvidenceBundle
from ledger.tlog.log import LogWriter
from ledger.tlog.notes import b64

if TYPE_CHECKING:
    from ledger.service.datasets import DatasetService


class BuildItem(NamedTuple):
    """One record offered to a build, as the caller sent it (validated by the recorder)."""

    line: int
    record_id: object
    subject_id: object
    category: object
    purpose: object = None


class ItemAnswer(NamedTuple):
    """A checked item's answer. A named tuple: a build answers millions of them."""

    line: int
    record_id: str
    eligible: bool
    reason: str
    decided_by: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "record_id": self.record_id,
            "eligible": self.eligible,
            "reason": self.reason,
            "decided_by": self.decided_by,
        }


class ItemError(NamedTuple):
    line: int
    error: InvalidInput

    def to_json(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "error": {"field": self.error.field, "message": str(self.error.args[0])},
        }


@dataclass
class BuildSummary:
    dataset: str
    version: str
    purpose: str
    checked_at: int
    at: str
    policy_version: int
    lines: int = 0
    records: int = 0
    errors: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    seq: int | None = None
    members_root: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "version": self.version,
            "purpose": self.purpose,
            "seq": self.seq,
            "records": self.records,
            "lines": self.lines,
            "errors": self.errors,
            "dropped": dict(sorted(self.dropped.items())),
            "checked_at": self.checked_at,
            "at": self.at,
            "policy_version": self.policy_version,
            "members_root": self.members_root,
        }


@dataclass(frozen=True, slots=True)
class RecordedBuild:
    summary: BuildSummary
    receipt: EvidenceBundle

    def to_json(self) -> dict[str, Any]:
        return {"build": self.summary.to_json(), "receipt": self.receipt.to_json()}


class _Spool:
    """A build's eligible items, in a temporary SQLite file: sorted by record id at the
    end (SQLite's BINARY collation on UTF-8 text is byte order) and checked for repeats."""

    def __init__(self) -> None:
        handle, name = tempfile.mkstemp(prefix="consent-ledger-build-", suffix=".sqlite")
        os.close(handle)
        self.path = Path(name)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = OFF")
        self._db.execute("PRAGMA synchronous = OFF")
        self._db.execute(
            "CREATE TABLE items (record_id TEXT NOT NULL, ref TEXT NOT NULL, "
            "category TEXT NOT NULL, line INTEGER NOT NULL)"
        )
        self._db.execute("BEGIN")

    def add(self, rows: list[tuple[str, str, str, int]]) -> None:
        self._db.executemany("INSERT INTO items VALUES (?, ?, ?, ?)", rows)

    def repeated(self) -> list[str]:
        self._db.execute("COMMIT")
        self._db.execute("CREATE INDEX items_record ON items (record_id)")
        return [
            record_id
            for (record_id,) in self._db.execute(
                "SELECT record_id FROM items GROUP BY record_id HAVING COUNT(*) > 1 "
                f"ORDER BY record_id LIMIT {stored.NAMED + 1}"
            )
        ]

    def members(self) -> Iterator[tuple[str, str, str]]:
        """The items, in record-id byte order."""
        yield from self._db.execute("SELECT record_id, ref, category FROM items ORDER BY record_id")

    def close(self) -> None:
        self._db.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class BuildRecorder:
    """One build: `check` items in chunks (all at one tree size and time), then `finish`
    records the eligible ones, or `close` drops everything (an interrupted build records
    nothing). A context manager that closes itself."""

    def __init__(
        self,
        service: DatasetService,
        dataset: str,
        version: str,
        *,
        purpose: str | None,
        actor: str,
        as_of: int | None = None,
        at: str | None = None,
    ) -> None:
        self._service = service
        self._actor = actor
        dataset = validate_dataset_name(dataset)
        version = validate_version(version)
        service.refuse_recorded(dataset, version)
        header = service.checker.check_many([], purpose=purpose, as_of=as_of, at=at)
        if header.at > format_timestamp(utc_now()):
            # Its members' obligations run from the instant they were checked at: one
            # that has not come yet would leave every withdrawal until then unowed.
            raise InvalidInput(
                f"a build is checked at an instant that has come, not {header.at}", field="at"
            )
        policy = service.reads.current_policy()
        self.purpose = policy.check_purpose(purpose or DEFAULT_PURPOSE, field="purpose")
        self.summary = BuildSummary(
            dataset=dataset,
            version=version,
            purpose=self.purpose,
            checked_at=header.checked_at,
            at=header.at,
            policy_version=header.policy_version,
        )
        self.checkpoint = header.checkpoint
        self._spool = _Spool()
        self._bad_records: list[str] = []
        # Instants after the build's `at` at which a member's subject's answers change
        # by themselves: obligations must be looked at then (or now, if passed).
        self._instants: set[tuple[str, str]] = set()

    def __enter__(self) -> BuildRecorder:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._spool.close()

    def check(self, items: Sequence[BuildItem]) -> list[ItemAnswer | ItemError]:
        """Answer items (in order) and spool them; the build's tree size and time."""
        # A build checks millions of items: the common item (one category, a plain
        # record id) takes the short path, every other one `_parse`.
        summary, purpose = self.summary, self.purpose
        prepared: list[tuple[BuildItem, str, str | list[str]] | ItemError] = []
        requests: list[tuple[object, str, str]] = []
        add, ask = prepared.append, requests.append
        for item in items:
            record_id, category = item.record_id, item.category
            if (
                type(record_id) is str
                and 0 < len(record_id) <= MAX_RECORD_ID
                and type(category) is str
                and "|" not in category
                and (item.purpose is None or item.purpose == purpose)
            ):
                add((item, record_id, category))
                ask((item.subject_id, category, purpose))
                continue
            parsed: tuple[BuildItem, str, str | list[str]] | ItemError = self._parse(item)
            add(parsed)
            if not isinstance(parsed, ItemError):
                for name in parsed[2]:
                    ask((item.subject_id, name, purpose))
        batch = self._service.checker.check_many(
            requests, purpose=purpose, as_of=summary.checked_at, at=summary.at, with_subjects=True
        )
        results = iter(batch.results)
        answers: list[ItemAnswer | ItemError] = []
        rows: list[tuple[str, str, str, int]] = []
        answer, spool = answers.append, rows.append
        dropped = summary.dropped
        refs = batch.refs
        assert refs is not None
        # Per chunk, not per build: a build-long set of a million refs would cost more
        # memory than scanning a subject's few decisions again in a later chunk.
        scanned: set[str] = set()
        for parsed in prepared:
            if isinstance(parsed, ItemError):
                summary.errors += 1
                answer(parsed)
                continue
            item, record_id, categories = parsed
            decisive: Eligibility | InvalidInput
            if isinstance(categories, str):
                decisive = next(results)
                stored_categories = categories
            else:
                decisive = self._decisive(results, len(categories))
                stored_categories = joined_categories(categories)
            if isinstance(decisive, InvalidInput):
                summary.errors += 1
                answer(ItemError(item.line, decisive))
                continue
            eligible, reason, decided_by = decisive
            answer(ItemAnswer(item.line, record_id, eligible, reason, decided_by))
            if eligible:
                subject = str(item.subject_id)
                ref = refs[subject]
                if ref not in scanned:
                    scanned.add(ref)
                    self._scan(batch, subject, ref)
                spool((record_id, ref, stored_categories, item.line))
                summary.records += 1
            else:
                dropped[reason] += 1
        summary.lines += len(prepared)
        self._spool.add(rows)
        return answers

    @staticmethod
    def _decisive(
        results: Iterator[Eligibility | InvalidInput], count: int
    ) -> Eligibility | InvalidInput:
        """Of one record's answers (one per category): the first error, else the first not
        eligible, else the first."""
        decisive: Eligibility | InvalidInput | None = None
        for _ in range(count):
            result = next(results)
            if decisive is None or (
                not isinstance(decisive, InvalidInput)
                and decisive.eligible
                and (isinstance(result, InvalidInput) or not result.eligible)
            ):
                decisive = result
        assert decisive is not None
        return decisive

    def _scan(self, batch: CheckBatch, subject_id: str, ref: str) -> None:
        """Note the instants after the build's `at` at which this member's subject's
        answers change by themselves."""
        assert batch.decisions is not None
        at = self.summary.at
        for decision in batch.decisions.get(subject_id, ()):
            for instant in (decision.effective, decision.expires):
                if instant is not None and instant > at:
                    self._instants.add((ref, instant))

    def reject(self, line: int, message: str) -> ItemError:
        """A line the caller could not read as an item (not JSON, too long): answered with
        an error and counted like the items `check` refuses."""
        self.summary.lines += 1
        self.summary.errors += 1
        return ItemError(line, InvalidInput(message, field="line"))

    def _parse(self, item: BuildItem) -> tuple[BuildItem, str, list[str]] | ItemError:
        if item.record_id is None:
            return ItemError(item.line, InvalidInput("is required", field="record_id"))
        try:
            record_id = validate_record_id(item.record_id)
        except InvalidInput as exc:
            # A malformed record id refuses the whole build (it names them at the end).
            self._bad_records.append(str(item.record_id)[:80])
            return ItemError(item.line, exc)
        if item.purpose is not None and item.purpose != self.purpose:
            return ItemError(
                item.line,
                InvalidInput(
                    f"this build is for purpose {self.purpose!r}, not {item.purpose!r}",
                    field="purpose",
                ),
            )
        category = item.category
        if isinstance(category, str):
            categories = category.split("|")
        elif isinstance(category, list) and all(isinstance(c, str) for c in category):
            categories = list(category)
        else:
            return ItemError(
                item.line, InvalidInput("must be a category or a list of them", field="category")
            )
        if not categories or any(not c for c in categories):
            return ItemError(item.line, InvalidInput("must name a category", field="category"))
        return item, record_id, categories

    def finish(self) -> RecordedBuild:
        """Record the build: refused, with nothing written, if record ids were malformed or
        repeated."""
        summary = self.summary
        if self._bad_records:
            raise InvalidInput(
                f"the build is refused: {len(self._bad_records)} record id(s) are not 1 to "
                f"256 characters: {stored.named(self._bad_records)}",
                field="record_id",
            )
        repeated = self._spool.repeated()
        if repeated:
            raise InvalidInput(
                f"the build is refused: record ids occur more than once: {stored.named(repeated)}",
                field="record_id",
            )

        def build(writer: LogWriter, session: Session) -> None:
            self._service.refuse_recorded(summary.dataset, summary.version, session)
            seq = writer.next_seq
            members = stored.MemberWriter(session, seq, summary.purpose)
            for record_id, ref, categories in self._spool.members():
                members.add(record_id, ref, categories)
            root = b64(members.finish())
            writer.append(
                *entries.dataset_recorded(
                    summary.dataset,
                    summary.version,
                    purpose=summary.purpose,
                    checked_at=summary.checked_at,
                    at=summary.at,
                    policy_version=summary.policy_version,
                    records=members.records,
                    members_root=root,
                )
            )
            obligations.register_build(
                session, seq, summary.checked_at, writer.time, self._instants
            )
            summary.seq, summary.members_root = seq, root

        sealed = self._service.writer.write(self._actor, build)
        assert sealed is not None
        return RecordedBuild(summary, self._service.reads.receipt(sealed))
