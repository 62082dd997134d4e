"""Purge obligations kept exact as the log grows and time passes (SPEC §7.2).

A member's obligation is a function of the log and the instant
(`ledger.consent.datasets.member_course`). What changes that function is known:
an entry about the member's subject, a policy publication, or an instant at which
one of the subject's decisions takes effect or expires. So `catch_up` looks again
at exactly the subjects those touched, found by index: entries since
`dataset_state.through_seq` joined with the members' refs, and the `dataset_wakeups`
that have come due. A policy publication concerns every member: its re-evaluation
runs in chunks (`policy_job`), inline while small, else left to the sweep, and
listings say they are catching up until it is done.

Every function here runs inside a write transaction (the write lock is held).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.orm import Session
from sqlmodel import col

from ledger.consent.datasets import (
    BuildTerms,
    MemberStatus,
    PublishedPolicy,
    TimedEntry,
    due_time,
    future_instants,
    member_course,
    split_categories,
)
from ledger.consent.entries import EntryKind
from ledger.consent.policy import Policy
from ledger.store.db import in_chunks
from ledger.store.schema import (
    DatasetBuild,
    DatasetMember,
    DatasetObligation,
    DatasetState,
    DatasetWakeup,
    LogEntryRow,
)
from ledger.tlog import log

# Members looked at again per transaction by a policy publication's re-evaluation.
POLICY_CHUNK = 5_000
# How many of them a write re-evaluates inline before leaving the rest to the sweep.
INLINE_POLICY_BUDGET = 20_000

_POLICY = EntryKind.POLICY_PUBLISHED.value
_policies_by_digest: dict[bytes, Policy] = {}


@dataclass
class _Member:
    build: int
    record_id: str
    position: int
    ref: str
    category: str
    obligation: int | None


def catch_up(session: Session, now: str, *, budget: int | None = None) -> bool:
    """Bring the obligations up to the session's log and `now` (see `Maintenance`).

    Costs one primary-key read while no build is live: every write calls it."""
    state = session.get(DatasetState, 1)
    if state is None or state.live_builds == 0:
        return True
    return Maintenance(session, now).catch_up(budget=budget)


class Maintenance:
    """Obligations' upkeep in one write transaction, at one instant `now`."""

    def __init__(self, session: Session, now: str) -> None:
        self.session = session
        state = session.get(DatasetState, 1)
        assert state is not None, "migration 0006 creates the dataset state row"
        self.state = state
        # Never behind an instant already swept: entries' and sweeps' clocks may differ.
        self.now = max(now, state.swept_until)
        self.size = log.tree_size(session)
        self._terms: dict[int, BuildTerms] | None = None
        self._policies: list[PublishedPolicy] | None = None

    # --- what the log and the clock brought ------------------------------------------------

    def catch_up(self, *, budget: int | None = None) -> bool:
        """Look again at every member something changed for since the last catch-up.

        True when the obligations are exact at (tree size, now); False while a policy's
        re-evaluation has members left (more than `budget`, by default
        `INLINE_POLICY_BUDGET`, were to be looked at).
        """
        if budget is None:
            budget = INLINE_POLICY_BUDGET
        state = self.state
        if state.live_builds == 0:
            return True
        refs: set[str] = set()
        if state.through_seq < self.size:
            refs.update(self._touched_since(state.through_seq))
            policy_seq = self.session.scalar(
                select(func.max(col(LogEntryRow.seq))).where(
                    col(LogEntryRow.kind) == _POLICY,
                    col(LogEntryRow.seq) >= state.through_seq,
                    col(LogEntryRow.seq) < self.size,
                )
            )
            if policy_seq is not None:
                self.start_policy_job(policy_seq)
        refs.update(self._due_wakeups())
        self.reevaluate(refs)
        state.through_seq = self.size
        state.swept_until = self.now
        done = self.run_policy_job(budget)
        self.session.add(state)
        return done

    def _touched_since(self, start: int) -> set[str]:
        """Refs with members among the subjects of entries in [start, size)."""
        return refs_with_members(self.session, subjects_between(self.session, start, self.size))

    def _due_wakeups(self) -> set[str]:
        due = col(DatasetWakeup.at) <= self.now
        refs = set(self.session.scalars(select(col(DatasetWakeup.ref)).distinct().where(due)))
        if refs:
            self.session.execute(delete(DatasetWakeup).where(due))
        return refs

    # --- a policy publication ---------------------------------------------------------------

    def start_policy_job(self, policy_seq: int) -> None:
        """Every member must be looked at again (from the start, if a job was running)."""
        self.state.policy_job = policy_seq
        self.state.job_build = None
        self.state.job_record = None

    def run_policy_job(self, budget: int) -> bool:
        """Re-evaluate up to `budget` members of a pending policy job; True when none is left."""
        state = self.state
        while state.policy_job is not None and budget > 0:
            query = select(
                col(DatasetMember.build), col(DatasetMember.record_id), col(DatasetMember.ref)
            ).order_by(col(DatasetMember.build), col(DatasetMember.record_id))
            if state.job_build is not None:
                query = query.where(
                    (col(DatasetMember.build) > state.job_build)
                    | (
                        (col(DatasetMember.build) == state.job_build)
                        & (col(DatasetMember.record_id) > state.job_record)
                    )
                )
            chunk = self.session.execute(query.limit(min(POLICY_CHUNK, budget))).all()
            if not chunk:
                state.policy_job = state.job_build = state.job_record = None
                break
            self.reevaluate({ref for _, _, ref in chunk})
            state.job_build, state.job_record = chunk[-1][0], chunk[-1][1]
            budget -= len(chunk)
        self.session.add(state)
        return state.policy_job is None

    # --- looking at members again ----------------------------------------------------------

    def reevaluate(self, refs: Iterable[str]) -> None:
        """Open an obligation for each of these subjects' members that stopped being
        eligible, cancel those of members eligible again, and note when to look again."""
        ordered = sorted(refs)
        for chunk in in_chunks(ordered):
            self._reevaluate_chunk(chunk)

    def _reevaluate_chunk(self, refs: Sequence[str]) -> None:
        session = self.session
        members = [
            _Member(*row)
            for row in session.execute(
                select(
                    col(DatasetMember.build),
                    col(DatasetMember.record_id),
                    col(DatasetMember.position),
                    col(DatasetMember.ref),
                    col(DatasetMember.category),
                    col(DatasetMember.obligation),
                ).where(col(DatasetMember.ref).in_(refs))
            )
        ]
        if not members:
            return
        histories = subject_histories(session, {m.ref for m in members}, self.size)
        terms = self.build_terms()
        policies = self.policies()
        statuses: dict[tuple[str, int, str], MemberStatus] = {}
        opened: list[tuple[_Member, MemberStatus]] = []
        cancelled: list[_Member] = []
        kept: list[tuple[_Member, MemberStatus]] = []
        for member in members:
            key = (member.ref, member.build, member.category)
            status = statuses.get(key)
            if status is None:
                status = statuses[key] = member_course(
                    policies,
                    histories.get(member.ref, ()),
                    split_categories(member.category),
                    terms[member.build],
                    self.now,
                )
            if not status.eligible and member.obligation is None:
                opened.append((member, status))
            elif status.eligible and member.obligation is not None:
                cancelled.append(member)
            elif not status.eligible:
                kept.append((member, status))
        # An open obligation states what `member_course` said when it was opened. That
        # can only differ now if an entry arrived dated before an instant already swept
        # (clocks of several writers): then the stated cause is replaced, so that the
        # table stays equal to the function of the log and the instant.
        for member, status in self._restated(kept):
            cancelled.append(member)
            opened.append((member, status))
        self._cancel(cancelled)
        self._open(opened)
        wakeups = [
            {"ref": ref, "at": instant}
            for ref, history in histories.items()
            for instant in sorted(future_instants(history, self.now))
        ]
        insert_wakeups(session, wakeups)

    def _restated(
        self, kept: list[tuple[_Member, MemberStatus]]
    ) -> list[tuple[_Member, MemberStatus]]:
        """Those of `kept` whose open obligation states another cause than `status`."""
        stated: dict[int, tuple[Any, ...]] = {}
        ids = [member.obligation for member, _ in kept if member.obligation is not None]
        for chunk in in_chunks(ids):
            for row in self.session.execute(
                select(
                    col(DatasetObligation.id),
                    col(DatasetObligation.reason),
                    col(DatasetObligation.cause),
                    col(DatasetObligation.cause_time),
                    col(DatasetObligation.due),
                ).where(col(DatasetObligation.id).in_(chunk))
            ):
                identity, *terms = row
                if identity is not None:
                    stated[identity] = tuple(terms)
        changed = []
        for member, status in kept:
            assert member.obligation is not None
            assert status.cause_time is not None
            assert status.policy is not None
            due = due_time(status.cause_time, status.policy.purge_within)
            if stated.get(member.obligation) != (
                status.reason,
                status.cause,
                status.cause_time,
                due,
            ):
                changed.append((member, status))
        return changed

    def _open(self, opened: list[tuple[_Member, MemberStatus]]) -> None:
        if not opened:
            return
        session = self.session
        next_id = (session.scalar(select(func.max(col(DatasetObligation.id)))) or 0) + 1
        rows: list[dict[str, Any]] = []
        links: list[dict[str, Any]] = []
        for offset, (member, status) in enumerate(opened):
            assert status.cause_time is not None
            assert status.policy is not None
            rows.append(
                {
                    "id": next_id + offset,
                    "build": member.build,
                    "position": member.position,
                    "record_id": member.record_id,
                    "reason": status.reason,
                    "cause": status.cause,
                    "cause_time": status.cause_time,
                    "due": due_time(status.cause_time, status.policy.purge_within),
                    "status": "open",
                }
            )
            links.append(
                {"b_build": member.build, "b_record": member.record_id, "b_id": next_id + offset}
            )
        session.execute(DatasetObligation.__table__.insert(), rows)  # type: ignore[attr-defined]
        _link(session, links)

    def _cancel(self, cancelled: list[_Member]) -> None:
        if not cancelled:
            return
        ids = [member.obligation for member in cancelled]
        for chunk in in_chunks(ids):
            self.session.execute(
                update(DatasetObligation)
                .where(col(DatasetObligation.id).in_(chunk))
                .values(status="cancelled", closed_time=self.now)
            )
        _link(
            self.session,
            [{"b_build": m.build, "b_record": m.record_id, "b_id": None} for m in cancelled],
        )

    # --- what every evaluation shares ------------------------------------------------------

    def build_terms(self) -> dict[int, BuildTerms]:
        # Every build, retired or not: a retired build has no members left to look at.
        if self._terms is None:
            self._terms = build_terms(self.session, self.size)
        return self._terms

    def policies(self) -> list[PublishedPolicy]:
        if self._policies is None:
            self._policies = published_policies(self.session, self.size)
        return self._policies


def build_terms(session: Session, size: int) -> dict[int, BuildTerms]:
    """What each build below `size` was checked at, by the seq of its entry."""
    return {
        seq: BuildTerms(purpose, checked_at, at)
        for seq, purpose, checked_at, at in session.execute(
            select(
                col(DatasetBuild.seq),
                col(DatasetBuild.purpose),
                col(DatasetBuild.checked_at),
                col(DatasetBuild.at),
            ).where(col(DatasetBuild.seq) < size)
        )
    }


def published_policies(session: Session, size: int) -> list[PublishedPolicy]:
    """Every policy published below `size`, in seq order, each parsed once per process."""
    found: list[PublishedPolicy] = []
    for seq, canonical in session.execute(
        select(col(LogEntryRow.seq), col(LogEntryRow.canonical))
        .where(col(LogEntryRow.kind) == _POLICY, col(LogEntryRow.seq) < size)
        .order_by(col(LogEntryRow.seq))
    ):
        body = orjson.loads(canonical)
        # By the entry's hash, not its seq: one process may serve several ledgers (tests,
        # tools), whose entry 1 are different policies.
        digest = hashlib.sha256(canonical).digest()
        policy = _policies_by_digest.get(digest)
        if policy is None:
            policy = _policies_by_digest[digest] = Policy.from_document(body["data"]["policy"])
        found.append(PublishedPolicy(seq, body["time"], policy))
    return found


def subject_histories(
    session: Session, refs: Iterable[str], size: int
) -> dict[str, list[TimedEntry]]:
    """The entries of each subject below `size`, in seq order."""
    histories: dict[str, list[TimedEntry]] = {}
    for chunk in in_chunks(sorted(refs)):
        for ref, seq, canonical in session.execute(
            select(col(LogEntryRow.subject), col(LogEntryRow.seq), col(LogEntryRow.canonical))
            .where(col(LogEntryRow.subject).in_(chunk), col(LogEntryRow.seq) < size)
            .order_by(col(LogEntryRow.seq))
        ):
            histories.setdefault(str(ref), []).append(TimedEntry.of(seq, orjson.loads(canonical)))
    return histories


def subjects_between(session: Session, start: int, end: int) -> set[str]:
    """The subjects of the entries in [start, end): what a stretch of the log concerns."""
    return {
        ref
        for ref in session.scalars(
            select(col(LogEntryRow.subject))
            .distinct()
            .where(
                col(LogEntryRow.seq) >= start,
                col(LogEntryRow.seq) < end,
                col(LogEntryRow.subject).is_not(None),
            )
        )
        if ref is not None
    }


def refs_with_members(session: Session, refs: Iterable[str], build: int | None = None) -> set[str]:
    """Which of these subjects have members (in `build`, or in any build). Two steps, not
    a join: the planner cannot tell that the stretch of log is small and the members many."""
    found: set[str] = set()
    for chunk in in_chunks(sorted(refs)):
        query = select(col(DatasetMember.ref)).distinct().where(col(DatasetMember.ref).in_(chunk))
        if build is not None:
            query = query.where(col(DatasetMember.build) == build)
        found.update(session.scalars(query))
    return found


def insert_wakeups(session: Session, wakeups: list[dict[str, Any]]) -> None:
    """Add (ref, at) rows, ignoring those already there."""
    if not wakeups:
        return
    table = DatasetWakeup.__table__  # type: ignore[attr-defined]
    dialect = session.get_bind().dialect.name
    # Imported here: the PostgreSQL dialect's modules cost every command 40 ms at start-up.
    statement: Any
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        statement = postgresql_insert(table).on_conflict_do_nothing()
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        statement = sqlite_insert(table).on_conflict_do_nothing()
    session.execute(statement, wakeups)


def _link(session: Session, links: list[dict[str, Any]]) -> None:
    """Point members at their open obligation (or at none)."""
    session.execute(
        update(DatasetMember.__table__)  # type: ignore[attr-defined]
        .where(
            DatasetMember.__table__.c.build == bindparam("b_build"),  # type: ignore[attr-defined]
            DatasetMember.__table__.c.record_id == bindparam("b_record"),  # type: ignore[attr-defined]
        )
        .values(obligation=bindparam("b_id")),
        links,
    )


def register_build(
    session: Session,
    build: int,
    checked_at: int,
    now: str,
    instants: Iterable[tuple[str, str]],
) -> None:
    """A build was just recorded (its members stored): have the next catch-up look at
    what happened to them since they were checked.

    The members were eligible at (`checked_at`, the build's `at`). Entries appended
    since then about their subjects, a policy published since, and decisions taking
    effect or expiring since (`instants`: (ref, instant) from the check) may have
    changed that: those subjects are due now. Later instants are due then.
    """
    state = session.get(DatasetState, 1)
    assert state is not None, "migration 0006 creates the dataset state row"
    if state.live_builds == 0:
        # Nothing was being kept while no build was live: start from this build.
        state.through_seq = build
        state.swept_until = max(state.swept_until, now)
    state.live_builds += 1
    touched = refs_with_members(session, subjects_between(session, checked_at, build), build)
    wakeups = [{"ref": ref, "at": now} for ref in touched]
    # An instant already passed since the check is due now.
    wakeups += [{"ref": ref, "at": max(instant, now)} for ref, instant in instants]
    insert_wakeups(session, list({(w["ref"], w["at"]): w for w in wakeups}.values()))
    policy_seq = session.scalar(
        select(func.max(col(LogEntryRow.seq))).where(
            col(LogEntryRow.kind) == _POLICY,
            col(LogEntryRow.seq) >= checked_at,
            col(LogEntryRow.seq) < build,
        )
    )
    if policy_seq is not None:
        state.policy_job = policy_seq
        state.job_build = state.job_record = None
    session.add(state)


def unregister_build(session: Session) -> None:
    """A build was retired: one fewer to keep obligations for."""
    state = session.get(DatasetState, 1)
    assert state is not None
    state.live_builds = max(0, state.live_builds - 1)
    session.add(state)
