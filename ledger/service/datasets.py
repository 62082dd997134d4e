"""Dataset builds, purges and obligations (SPEC §7): the service's part.

A build is checked item by item at one tree size and time (`BuildRecorder`), its
eligible items spooled to a temporary SQLite file (a build of millions must not
live in memory), then recorded in one write: the members in record-id byte order,
their leaves, and one `dataset.recorded` entry naming their root. Purges and
retirements are writes too; obligations are kept by `ledger.datasets.obligations`
inside every write's transaction, and by `sweep` as time passes.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from ledger.consent import entries
from ledger.consent.datasets import (
    MAX_RECORD_ID,
    STATUSES,
    joined_categories,
    leaf_category,
    member_leaf,
    parse_build,
    split_categories,
    validate_dataset_name,
    validate_record_id,
    validate_version,
)
from ledger.consent.decisions import DEFAULT_PURPOSE
from ledger.consent.eligibility import Eligibility
from ledger.datasets import members as stored
from ledger.datasets import obligations
from ledger.errors import CatchingUp, Conflict, InvalidInput, NotFound, VerificationError
from ledger.service.checker import Checker
from ledger.service.reads import ReadModel, refuse_unknown_subject
from ledger.service.views import CheckBatch
from ledger.service.writer import Writer
from ledger.store.db import read_session, write_session
from ledger.store.schema import (
    DatasetBuild,
    DatasetMember,
    DatasetObligation,
    DatasetRemoval,
    DatasetState,
    DatasetWakeup,
    SubjectMapping,
)
from ledger.timestamps import format_timestamp, normalize_timestamp, utc_now
from ledger.tlog import log
from ledger.tlog.evidence import EvidenceBundle
from ledger.tlog.log import LogWriter
from ledger.tlog.notes import b64

# Obligations per page of a listing, by default and at most.
PAGE = 1_000
MAX_PAGE = 10_000
# Members a listing re-evaluates itself (a policy's re-evaluation) before it says it is
# catching up instead.
LISTING_BUDGET = obligations.INLINE_POLICY_BUDGET


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


@dataclass(frozen=True, slots=True)
class PurgeResult:
    dataset: str
    version: str
    records: int
    fulfils: int
    purged_root: str
    seq: int
    receipt: EvidenceBundle

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "version": self.version,
            "seq": self.seq,
            "records": self.records,
            "fulfils": self.fulfils,
            "voluntary": self.records - self.fulfils,
            "purged_root": self.purged_root,
            "receipt": self.receipt.to_json(),
        }


class DatasetService:
    """Builds, purges, retirements and the reads of §7."""

    def __init__(self, engine: Engine, writer: Writer, checker: Checker, reads: ReadModel) -> None:
        self._engine = engine
        self.writer = writer
        self.checker = checker
        self.reads = reads
        self._erasure_secret = reads.erasure_secret

    # --- writes ----------------------------------------------------------------------------

    def recorder(
        self,
        dataset: str,
        version: str,
        *,
        actor: str,
        purpose: str | None = None,
        as_of: int | None = None,
        at: str | None = None,
    ) -> BuildRecorder:
        return BuildRecorder(
            self, dataset, version, purpose=purpose, actor=actor, as_of=as_of, at=at
        )

    def refuse_recorded(self, dataset: str, version: str, session: Session | None = None) -> None:
        """Conflict if (dataset, version) was recorded already."""
        if session is None:
            with read_session(self._engine) as reading:
                self.refuse_recorded(dataset, version, reading)
            return
        if _build_seq(session, dataset, version) is not None:
            raise Conflict(f"{dataset}@{version} is recorded already: a build is recorded once")

    def purge(
        self, dataset: str, version: str, record_ids: Sequence[object], *, actor: str
    ) -> PurgeResult:
        """Remove records from a build: each fulfils its open obligation, if it has one."""
        dataset, version = validate_dataset_name(dataset), validate_version(version)
        if not isinstance(record_ids, list | tuple) or not record_ids:
            raise InvalidInput("give at least one record id", field="record_ids")
        ids = [validate_record_id(r, field=f"record_ids[{i}]") for i, r in enumerate(record_ids)]
        found: dict[str, Any] = {}

        def build(writer: LogWriter, session: Session) -> None:
            seq = _live_build(session, dataset, version)
            # What is due by now first: a purge fulfils every obligation that exists.
            obligations.catch_up(session, writer.time)
            records, fulfils, root = stored.purge_members(
                session, seq, f"{dataset}@{version}", ids, writer.next_seq, writer.time
            )
            entry = writer.append(
                *entries.dataset_purged(
                    dataset, version, records=records, purged_root=b64(root), fulfils=fulfils
                )
            )
            found.update(records=records, fulfils=fulfils, root=b64(root), seq=entry.seq)

        sealed = self.writer.write(actor, build)
        assert sealed is not None
        return PurgeResult(
            dataset=dataset,
            version=version,
            records=found["records"],
            fulfils=found["fulfils"],
            purged_root=found["root"],
            seq=found["seq"],
            receipt=self.reads.receipt(sealed),
        )

    def retire(self, dataset: str, version: str, *, actor: str) -> dict[str, Any]:
        """Delete a whole build everywhere; its open obligations close as fulfilled."""
        dataset, version = validate_dataset_name(dataset), validate_version(version)
        found: dict[str, Any] = {}

        def build(writer: LogWriter, session: Session) -> None:
            seq = _live_build(session, dataset, version)
            obligations.catch_up(session, writer.time)
            fulfilled = stored.retire_members(session, seq, writer.next_seq, writer.time)
            entry = writer.append(*entries.dataset_retired(dataset, version))
            obligations.unregister_build(session)
            found.update(fulfils=fulfilled, seq=entry.seq)

        sealed = self.writer.write(actor, build)
        assert sealed is not None
        return {
            "dataset": dataset,
            "version": version,
            "seq": found["seq"],
            "fulfils": found["fulfils"],
            "receipt": self.reads.receipt(sealed).to_json(),
        }

    def sweep(
        self, *, now: str | None = None, max_transactions: int | None = None
    ) -> dict[str, Any]:
        """Bring the obligations up to the log and the clock: decisions that took effect
        or expired, and a policy's re-evaluation, a chunk per transaction (at most
        `max_transactions` of them; `done` says whether anything is left)."""
        moment = (
            format_timestamp(utc_now()) if now is None else normalize_timestamp(now, field="now")
        )
        transactions, done = 0, True
        with read_session(self._engine) as session:
            state = session.get(DatasetState, 1)
            live = state is not None and state.live_builds > 0
        # Without a live build there is nothing to keep: no write lock taken.
        while live and (max_transactions is None or transactions < max_transactions):
            with write_session(self._engine) as session:
                done = obligations.catch_up(session, moment, budget=obligations.POLICY_CHUNK)
            transactions += 1
            if done:
                break
        with read_session(self._engine) as session:
            state = session.get(DatasetState, 1)
            assert state is not None
            return {
                "swept_until": state.swept_until or moment,
                "through_seq": state.through_seq,
                "transactions": transactions,
                "done": done,
            }

    def _ensure_current(self) -> None:
        """Obligations exact at this instant, or CatchingUp while a policy's re-evaluation
        is larger than a listing should do itself."""
        moment = format_timestamp(utc_now())
        with read_session(self._engine) as session:
            state = session.get(DatasetState, 1)
            if state is None or state.live_builds == 0:
                return
            behind = (
                state.through_seq < log.tree_size(session)
                or state.policy_job is not None
                or session.scalar(
                    select(func.count())
                    .select_from(DatasetWakeup)
                    .where(col(DatasetWakeup.at) <= moment)
                )
            )
        if not behind:
            return
        with write_session(self._engine) as session:
            done = obligations.catch_up(session, moment, budget=LISTING_BUDGET)
            state = session.get(DatasetState, 1)
            job = state.policy_job if state is not None else None
        if not done:
            raise CatchingUp(
                f"obligations are being worked out again after the policy published at entry "
                f"{job}; ask again shortly (`consent-ledger dataset sweep` finishes it)"
            )

    # --- reads ------------------------------------------------------------------------------

    def builds(self, dataset: str | None = None) -> list[dict[str, Any]]:
        """Every build (of one dataset), oldest first, with its members and obligations."""
        if dataset is not None:
            dataset = validate_dataset_name(dataset)
        self._ensure_current()
        with read_session(self._engine) as session:
            query = select(DatasetBuild).order_by(col(DatasetBuild.seq))
            if dataset is not None:
                query = query.where(col(DatasetBuild.dataset) == dataset)
            rows = list(session.scalars(query))
            if dataset is not None and not rows:
                raise NotFound(f"no dataset {dataset!r} has been recorded")
            return [_build_json(session, row) for row in rows]

    def build(self, dataset: str, version: str) -> dict[str, Any]:
        """A build's summary and the receipt of its `dataset.recorded` entry."""
        dataset, version = validate_dataset_name(dataset), validate_version(version)
        self._ensure_current()
        with self.reads.snapshot() as snapshot, read_session(self._engine) as session:
            row = _build_row(session, dataset, version)
            checkpoint = snapshot.latest_checkpoint()
            bundle = snapshot.bundle(
                [snapshot.read_entry(row.seq)], checkpoint.tree_size, checkpoint.note
            )
            return {"build": _build_json(session, row), "receipt": bundle.to_json()}

    def member_proof(self, dataset: str, version: str, record_id: str) -> dict[str, Any]:
        """A member's leaf and its RFC 9162 inclusion proof in the build's `members_root`,
        with the evidence bundle of the `dataset.recorded` entry that signs that root."""
        dataset, version = validate_dataset_name(dataset), validate_version(version)
        record_id = validate_record_id(record_id)
        with self.reads.snapshot() as snapshot, read_session(self._engine) as session:
            row = _build_row(session, dataset, version)
            member = session.get(DatasetMember, (row.seq, record_id))
            if member is None:
                raise NotFound(f"{record_id!r} is not a member of {dataset}@{version} (now)")
            categories = split_categories(member.category)
            leaf = member_leaf(record_id, member.ref, categories, row.purpose)
            if leaf != stored.stored_leaf(session, row.seq, member.position):
                raise VerificationError(
                    f"the stored member {record_id!r} of {dataset}@{version} does not match "
                    "its leaf: run `consent-ledger verify`"
                )
            hashes = stored.member_proof(session, row.seq, member.position, row.records)
            checkpoint = snapshot.latest_checkpoint()
            bundle = snapshot.bundle(
                [snapshot.read_entry(row.seq)], checkpoint.tree_size, checkpoint.note
            )
        return {
            "dataset": dataset,
            "version": version,
            "leaf": {
                "category": leaf_category(categories),
                "purpose": row.purpose,
                "record": record_id,
                "subject": member.ref,
            },
            "index": member.position,
            "records": row.records,
            "hashes": [b64(h) for h in hashes],
            "entry": bundle.to_json(),
        }

    def obligations(
        self,
        dataset: str,
        *,
        version: str | None = None,
        status: str | None = None,
        after: int | None = None,
        limit: int = PAGE,
    ) -> dict[str, Any]:
        """A page of a dataset's obligations, oldest first; `next` continues it."""
        dataset = validate_dataset_name(dataset)
        if version is not None:
            version = validate_version(version)
        if status is not None and status not in STATUSES:
            raise InvalidInput(
                f"must be one of {', '.join(STATUSES)}, got {status!r}", field="status"
            )
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"must be 1 to {MAX_PAGE}", field="limit")
        if after is not None and (
            isinstance(after, bool) or not isinstance(after, int) or after < 0
        ):
            raise InvalidInput("must be a cursor from an earlier page", field="after")
        self._ensure_current()
        now = format_timestamp(utc_now())
        with read_session(self._engine) as session:
            query = select(col(DatasetBuild.seq), col(DatasetBuild.version)).where(
                col(DatasetBuild.dataset) == dataset
            )
            if version is not None:
                query = query.where(col(DatasetBuild.version) == version)
            versions = dict(session.execute(query).all())
            if not versions:
                what = dataset if version is None else f"{dataset}@{version}"
                raise NotFound(f"no build {what} has been recorded")
            listing = select(DatasetObligation).where(
                col(DatasetObligation.build).in_(list(versions))
            )
            if status in ("open", "overdue"):
                listing = listing.where(col(DatasetObligation.status) == "open")
                if status == "overdue":
                    listing = listing.where(col(DatasetObligation.due) < now)
            elif status is not None:
                listing = listing.where(col(DatasetObligation.status) == status)
            if after is not None:
                listing = listing.where(col(DatasetObligation.id) > after)
            rows = list(
                session.scalars(listing.order_by(col(DatasetObligation.id)).limit(limit + 1))
            )
        page = rows[:limit]
        return {
            "obligations": [_obligation_json(dataset, versions[o.build], o, now) for o in page],
            "next": page[-1].id if len(rows) > limit else None,
        }

    def subject_datasets(self, subject_id: str) -> dict[str, Any]:
        """The builds holding a subject's records, and their open obligations."""
        self._ensure_current()
        now = format_timestamp(utc_now())
        with read_session(self._engine) as session:
            mapping = session.get(SubjectMapping, subject_id)
            if mapping is None:
                refuse_unknown_subject(session, subject_id, self._erasure_secret())
            rows = session.execute(
                select(DatasetMember, DatasetBuild)
                .join(DatasetBuild, col(DatasetBuild.seq) == col(DatasetMember.build))
                .where(col(DatasetMember.ref) == mapping.ref)
                .order_by(col(DatasetMember.build), col(DatasetMember.record_id))
            ).all()
            open_ids = [m.obligation for m, _ in rows if m.obligation is not None]
            open_rows = {
                o.id: o
                for o in session.scalars(
                    select(DatasetObligation).where(col(DatasetObligation.id).in_(open_ids))
                )
            }
        builds: dict[int, dict[str, Any]] = {}
        for member, build in rows:
            entry = builds.setdefault(
                build.seq,
                {
                    "dataset": build.dataset,
                    "version": build.version,
                    "purpose": build.purpose,
                    "records": [],
                    "obligations": [],
                },
            )
            entry["records"].append(member.record_id)
            if member.obligation is not None and member.obligation in open_rows:
                entry["obligations"].append(
                    _obligation_json(
                        build.dataset, build.version, open_rows[member.obligation], now
                    )
                )
        return {"subject_id": subject_id, "datasets": list(builds.values())}


def _build_seq(session: Session, dataset: str, version: str) -> int | None:
    return session.scalar(
        select(col(DatasetBuild.seq)).where(
            col(DatasetBuild.dataset) == dataset, col(DatasetBuild.version) == version
        )
    )


def _build_row(session: Session, dataset: str, version: str) -> DatasetBuild:
    row = session.scalars(
        select(DatasetBuild).where(
            col(DatasetBuild.dataset) == dataset, col(DatasetBuild.version) == version
        )
    ).first()
    if row is None:
        raise NotFound(f"no build {dataset}@{version} has been recorded")
    return row


def _retired(session: Session, dataset: str, version: str) -> int | None:
    return session.scalar(
        select(col(DatasetRemoval.seq)).where(
            col(DatasetRemoval.dataset) == dataset,
            col(DatasetRemoval.version) == version,
            col(DatasetRemoval.kind) == "retired",
        )
    )


def _live_build(session: Session, dataset: str, version: str) -> int:
    seq = _build_row(session, dataset, version).seq
    retired = _retired(session, dataset, version)
    if retired is not None:
        raise Conflict(f"{dataset}@{version} was retired (entry {retired}): it has no records")
    return seq


def _build_json(session: Session, row: DatasetBuild) -> dict[str, Any]:
    counts = dict(
        session.execute(
            select(col(DatasetObligation.status), func.count())
            .where(col(DatasetObligation.build) == row.seq)
            .group_by(col(DatasetObligation.status))
        ).all()
    )
    now = format_timestamp(utc_now())
    overdue = session.scalar(
        select(func.count())
        .select_from(DatasetObligation)
        .where(
            col(DatasetObligation.build) == row.seq,
            col(DatasetObligation.status) == "open",
            col(DatasetObligation.due) < now,
        )
    )
    live = session.scalar(
        select(func.count()).select_from(DatasetMember).where(col(DatasetMember.build) == row.seq)
    )
    purged = session.scalar(
        select(func.coalesce(func.sum(col(DatasetRemoval.records)), 0)).where(
            col(DatasetRemoval.dataset) == row.dataset,
            col(DatasetRemoval.version) == row.version,
            col(DatasetRemoval.kind) == "purged",
        )
    )
    return {
        "dataset": row.dataset,
        "version": row.version,
        "purpose": row.purpose,
        "seq": row.seq,
        "time": row.time,
        "records": row.records,
        "members": int(live or 0),
        "purged": int(purged or 0),
        "retired": _retired(session, row.dataset, row.version),
        "checked_at": row.checked_at,
        "at": row.at,
        "policy_version": row.policy_version,
        "members_root": row.members_root,
        "obligations": {
            "open": int(counts.get("open", 0)),
            "overdue": int(overdue or 0),
            "fulfilled": int(counts.get("fulfilled", 0)),
            "cancelled": int(counts.get("cancelled", 0)),
        },
    }


def _obligation_json(
    dataset: str, version: str, row: DatasetObligation, now: str
) -> dict[str, Any]:
    status = row.status
    if status == "open" and row.due < now:
        status = "overdue"
    return {
        "dataset": dataset,
        "version": version,
        "record_id": row.record_id,
        "reason": row.reason,
        "cause": row.cause,
        "cause_time": row.cause_time,
        "due": row.due,
        "status": status,
        "closed_by": row.closed_seq,
        "closed_time": row.closed_time,
    }


def parse_build_name(text: str, *, field: str = "NAME@VERSION") -> tuple[str, str]:
    return parse_build(text, field=field)


ProgressFn = Callable[[int], None]
