"""Dataset builds, purges and obligations (SPEC §7): the service's part.

A build is checked and recorded by `ledger.service.builds.BuildRecorder`. Purges and
retirements are writes too; obligations are kept by `ledger.datasets.obligations`
inside every write's transaction, and by `sweep` as time passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from ledger.consent import entries
from ledger.consent.datasets import (
    STATUSES,
    leaf_category,
    member_leaf,
    split_categories,
    validate_dataset_name,
    validate_record_id,
    validate_version,
)
from ledger.datasets import members as stored
from ledger.datasets import obligations
from ledger.errors import CatchingUp, Conflict, InvalidInput, NotFound, VerificationError
from ledger.service.builds import BuildRecorder
from ledger.service.checker import Checker
from ledger.service.reads import ReadModel, refuse_unknown_subject
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
