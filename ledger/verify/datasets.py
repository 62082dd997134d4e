"""Step 8 of verification: dataset builds, their members and purge obligations (SPEC §7).

Builds and removals (`dataset_builds`, `dataset_removals`) equal a replay of the log
by step 2; this step checks what lives beside the log against them:

- leaves: every build's chunks of leaf hashes run 0..n-1, each chunk's root is the
  root over its hashes, they hold `records` leaves, and the RFC 9162 root over the
  chunk roots is the `members_root` the build's entry signs;
- members: each live member's leaf, recomputed from its row, is the stored leaf at
  its position; positions are unique and record ids in byte order follow them; a
  retired build has none; live members and the records its purges removed add up to
  `records`; each member was eligible when its build was checked;
- obligations: at the instant the tables claim to be exact at
  (`dataset_state.swept_until`), a member that is not eligible points at an open
  obligation saying exactly what `member_course` says (reason, cause, cause time,
  due), an eligible one at none, and every open obligation is pointed at; closed
  ones name a purge or retirement of their build; the instants at which a member's
  answer will change by itself are each awaited by a wakeup.

Members are read a build at a time, in position order and in chunks, with their
subjects' histories loaded per chunk: a build may hold millions of members.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from ledger.consent.datasets import (
    BuildTerms,
    MemberStatus,
    PublishedPolicy,
    TimedEntry,
    _state_and_decisions,
    due_time,
    future_instants,
    member_course,
    member_leaf,
    record_order,
    split_categories,
)
from ledger.consent.eligibility import evaluate_eligibility
from ledger.datasets.members import CHUNK_LEAVES
from ledger.datasets.obligations import published_policies, subject_histories
from ledger.errors import VerificationError
from ledger.store.db import in_chunks
from ledger.tlog.merkle import HASH_SIZE, Growth, TreeBuilder
from ledger.tlog.notes import b64
from ledger.verify.rows import OrderedRows

# Statuses an obligation row may have (`overdue` is an open one past its due time).
_STATUSES: Final = frozenset({"open", "fulfilled", "cancelled"})
_CHUNK_BYTES: Final = CHUNK_LEAVES * HASH_SIZE

MembersProgress = Callable[[int], None]


@dataclass
class _Build:
    """A recorded build, as the verified projections state it."""

    seq: int
    dataset: str
    version: str
    purpose: str
    checked_at: int
    at: str
    records: int
    members_root: str
    purged: int = 0  # records removed by its dataset.purged entries
    retired: int | None = None  # seq of its dataset.retired entry
    removals: dict[int, str] = field(default_factory=dict)  # seq -> time of each removal

    @property
    def where(self) -> str:
        return f"dataset {self.dataset}@{self.version}"

    def of(self, record_id: str | None) -> str:
        return f"{self.where} record {record_id!r}"

    @property
    def terms(self) -> BuildTerms:
        return BuildTerms(self.purpose, self.checked_at, self.at)


@dataclass(frozen=True, slots=True)
class _ObligationRow:
    id: int
    build: int
    position: int
    record_id: str | None
    reason: str
    cause: int | None
    cause_time: str
    due: str
    status: str
    closed_seq: int | None
    closed_time: str | None


@dataclass(frozen=True, slots=True)
class _State:
    """`dataset_state`: the log prefix and the instant the obligations are exact at."""

    through_seq: int
    swept_until: str
    live_builds: int
    policy_job: int | None
    job_build: int | None
    job_record: str | None


@dataclass
class DatasetCounts:
    builds: int = 0
    members: int = 0


def count_members(conn: Connection) -> int:
    """How many members the dataset step reads (for progress)."""
    return int(conn.exec_driver_sql("SELECT COUNT(*) FROM dataset_members").scalar_one())


def check_datasets(
    session: Session, size: int, progress: MembersProgress | None = None
) -> DatasetCounts:
    """Check every build's leaves, members and obligations; raise VerificationError
    naming the build and record at fault."""
    return _DatasetCheck(session, size, progress).run()


class _DatasetCheck:
    def __init__(self, session: Session, size: int, progress: MembersProgress | None) -> None:
        self.session = session
        self.conn = session.connection()
        self.size = size
        self.progress = progress
        self.members_done = 0
        self.builds: dict[int, _Build] = {}
        self.state = self._read_state()
        self.policies: list[PublishedPolicy] = []
        # Per dataset.purged entry, the obligations its entry says it fulfilled.
        self.fulfils: dict[int, int] = {}

    def run(self) -> DatasetCounts:
        self._read_builds()
        self._check_state()
        self._check_orphans()
        if not self.builds:
            return DatasetCounts()
        self.policies = published_policies(self.session, self.size)
        for build in self.builds.values():
            _BuildCheck(self, build).run()
        self._check_closed_obligations()
        return DatasetCounts(len(self.builds), self.members_done)

    # --- what the projections and the state row say -------------------------------------

    def _read_state(self) -> _State:
        row = self.conn.exec_driver_sql(
            "SELECT through_seq, swept_until, live_builds, policy_job, job_build, job_record "
            "FROM dataset_state WHERE id = 1"
        ).first()
        if row is None:
            raise VerificationError("the row is missing", subject="dataset state")
        return _State(*row)

    def _read_builds(self) -> None:
        by_name: dict[tuple[str, str], _Build] = {}
        for row in self.conn.exec_driver_sql(
            "SELECT seq, dataset, version, purpose, checked_at, at, records, members_root "
            "FROM dataset_builds ORDER BY seq"
        ):
            build = _Build(*row)
            self.builds[build.seq] = by_name[build.dataset, build.version] = build
        for seq, kind, dataset, version, records, fulfils, time in self.conn.exec_driver_sql(
            "SELECT seq, kind, dataset, version, records, fulfils, time FROM dataset_removals "
            "ORDER BY seq"
        ):
            removed = by_name.get((dataset, version))
            what = "purges" if kind == "purged" else "retires"
            if removed is None or removed.seq > seq:
                raise VerificationError(
                    f"{what} {dataset}@{version}, which no earlier entry recorded",
                    subject=f"entry {seq}",
                )
            if removed.retired is not None:
                raise VerificationError(
                    f"{what} {dataset}@{version}, retired already by entry {removed.retired}",
                    subject=f"entry {seq}",
                )
            removed.removals[seq] = time
            if kind == "purged":
                removed.purged += records
                self.fulfils[seq] = fulfils
            else:
                removed.retired = seq

    def _check_state(self) -> None:
        state = self.state
        live = sum(1 for build in self.builds.values() if build.retired is None)
        if state.live_builds != live:
            raise VerificationError(
                f"says {state.live_builds} live builds, the log has {live}: obligations "
                "would not be kept",
                subject="dataset state",
            )
        # Every write brings the obligations up to its own entries in its transaction,
        # so no crash leaves them behind the log while a build is live.
        if live and state.through_seq != self.size:
            raise VerificationError(
                f"obligations are kept up to entry {state.through_seq}, but the log holds "
                f"{self.size} entries: a write did not bring them up to date",
                subject=f"entry {min(state.through_seq, self.size)}",
            )

    def _check_orphans(self) -> None:
        for table in ("dataset_members", "dataset_leaves", "dataset_obligations"):
            for (build,) in self.conn.exec_driver_sql(
                f"SELECT build FROM {table} WHERE build NOT IN "
                "(SELECT seq FROM dataset_builds) LIMIT 1"
            ):
                raise VerificationError(
                    f"{table} has rows for build {build}, which no dataset.recorded entry records",
                    subject=f"entry {build}",
                )

    # --- obligations closed by purges, retirements or eligibility regained ---------------

    def _check_closed_obligations(self) -> None:
        fulfilled: Counter[int] = Counter()
        with OrderedRows(
            self.conn,
            "SELECT id, build, position, record_id, status, closed_seq, closed_time "
            "FROM dataset_obligations WHERE status <> 'open' ORDER BY id",
        ) as rows:
            for batch in rows.batches():
                for number, seq, position, record_id, status, closed_seq, closed_time in batch:
                    build = self.builds[seq]
                    where = build.of(record_id) if record_id is not None else build.where
                    named = f"obligation {number}"
                    if status not in _STATUSES:
                        raise VerificationError(f"{named} has status {status!r}", subject=where)
                    if not 0 <= position < build.records:
                        raise VerificationError(
                            f"{named} names position {position} of {build.records}",
                            subject=where,
                        )
                    if status == "cancelled":
                        if closed_seq is not None or closed_time is None or record_id is None:
                            raise VerificationError(
                                f"{named} is cancelled (eligible again) but names entry "
                                f"{closed_seq} as closing it, or no time or record",
                                subject=where,
                            )
                        continue
                    if closed_seq not in build.removals:
                        raise VerificationError(
                            f"{named} is fulfilled by entry {closed_seq}, which neither purges "
                            "nor retires this build",
                            subject=where,
                        )
                    if closed_time != build.removals[closed_seq]:
                        raise VerificationError(
                            f"{named} was fulfilled at {closed_time}, but entry {closed_seq} "
                            f"was appended at {build.removals[closed_seq]}",
                            subject=where,
                        )
                    fulfilled[closed_seq] += 1
        for seq, stated in self.fulfils.items():
            if fulfilled[seq] != stated:
                raise VerificationError(
                    f"says it fulfilled {stated} obligations, {fulfilled[seq]} name it",
                    subject=f"entry {seq}",
                )

    # --- what every build's members share ------------------------------------------------

    def pending_positions(self, build: _Build) -> Callable[[int], bool] | None:
        """Which members of `build` a policy's re-evaluation (in chunks, in the database's
        (build, record_id) order) has not reached yet: their obligations may still be as
        before that policy. None when every member is up to date."""
        state = self.state
        if state.policy_job is None or (
            state.job_build is not None and build.seq < state.job_build
        ):
            return None
        if state.job_build is None or build.seq > state.job_build:
            return lambda _position: True
        # The cut is in the database's collation: let the database say where it is.
        placeholder = "?" if self.conn.dialect.paramstyle == "qmark" else "%s"
        pending = {
            position
            for (position,) in self.conn.exec_driver_sql(
                "SELECT position FROM dataset_members WHERE build = "
                f"{placeholder} AND record_id > {placeholder}",
                (build.seq, state.job_record),
            )
        }
        return pending.__contains__

    def members_checked(self, count: int) -> None:
        self.members_done += count
        if self.progress:
            self.progress(self.members_done)


class _BuildCheck:
    """One build: its leaves and its members, read side by side in position order."""

    def __init__(self, check: _DatasetCheck, build: _Build) -> None:
        self.check = check
        self.conn = check.conn
        self.build = build
        self.chunk_roots = TreeBuilder()
        self.leaves = 0
        self.next_chunk = 0
        self.short_chunk: int | None = None  # a chunk of fewer than 256 leaves: the last
        self.window: dict[int, bytes] = {}  # chunk -> its packed leaves, while needed
        self.last_position = -1
        self.last_record = b""
        self.live = 0
        self.pointed = 0  # members pointing at their open obligation
        self.pending = check.pending_positions(build)

    def run(self) -> None:
        build = self.build
        with (
            OrderedRows(
                self.conn,
                "SELECT chunk, hashes, root FROM dataset_leaves "
                f"WHERE build = {build.seq} ORDER BY chunk",
            ) as leaves,
            OrderedRows(
                self.conn,
                "SELECT position, record_id, ref, category, obligation FROM dataset_members "
                f"WHERE build = {build.seq} ORDER BY position",
            ) as members,
        ):
            for batch in members.batches():
                if build.retired is not None:
                    raise VerificationError(
                        f"is a member still, but entry {build.retired} retired the build",
                        subject=build.of(batch[0][1]),
                    )
                self._leaf_chunks(leaves.below(batch[-1][0] // CHUNK_LEAVES + 1), keep=True)
                self._members(batch)
                self.check.members_checked(len(batch))
            # Chunks after the last member's (purged records', or a retired build's).
            self._leaf_chunks(leaves.below(None), keep=False)
        self._check_root()
        self._check_open_obligations()
        # A retired build has no members left (checked above): nothing to count.
        if build.retired is None and self.live + build.purged != build.records:
            removed = build.records - build.purged - self.live
            raise VerificationError(
                f"has {self.live} members and its purges removed {build.purged} records, but "
                f"entry {build.seq} recorded {build.records}: "
                + (
                    f"{removed} member(s) were deleted without a purge"
                    if removed > 0
                    else f"{-removed} member(s) too many"
                ),
                subject=build.where,
            )

    # --- leaves ------------------------------------------------------------------------

    def _leaf_chunks(self, rows: list[tuple[Any, ...]], *, keep: bool) -> None:
        """Check the next chunks of leaves; `keep` them for the members to be compared."""
        where = self.build.where
        for chunk, hashes, root in rows:
            hashes = bytes(hashes)
            named = f"leaves chunk {chunk}"
            if chunk != self.next_chunk:
                missing = f"leaves chunk {self.next_chunk} is missing"
                raise VerificationError(
                    missing if chunk > self.next_chunk else f"{named} is out of place",
                    subject=where,
                )
            if self.short_chunk is not None:
                raise VerificationError(
                    f"{named} follows chunk {self.short_chunk} of fewer than {CHUNK_LEAVES} leaves",
                    subject=where,
                )
            if not hashes or len(hashes) % HASH_SIZE or len(hashes) > _CHUNK_BYTES:
                raise VerificationError(
                    f"{named} holds {len(hashes)} bytes, not 1 to {CHUNK_LEAVES} hashes",
                    subject=where,
                )
            computed = Growth(0, (), hashes).root
            if bytes(root) != computed:
                raise VerificationError(
                    f"{named}: the stored root is not the root over its leaves", subject=where
                )
            if len(hashes) < _CHUNK_BYTES:
                self.short_chunk = chunk
            self.chunk_roots.append(computed)
            self.leaves += len(hashes) // HASH_SIZE
            if keep:
                self.window[chunk] = hashes
            self.next_chunk += 1

    def _check_root(self) -> None:
        build = self.build
        if self.leaves != build.records:
            raise VerificationError(
                f"holds {self.leaves} leaves, but entry {build.seq} recorded "
                f"{build.records} members: leaves were deleted or added",
                subject=build.where,
            )
        if b64(self.chunk_roots.root()) != build.members_root:
            raise VerificationError(
                f"the root over its leaves is not the members_root entry {build.seq} signs: "
                "leaves were changed",
                subject=build.where,
            )

    # --- members -----------------------------------------------------------------------

    def _members(self, batch: list[tuple[Any, ...]]) -> None:
        build = self.build
        obligations = self._obligation_rows(
            [obligation for *_, obligation in batch if obligation is not None]
        )
        histories = subject_histories(
            self.check.session, {ref for _, _, ref, _, _ in batch}, self.check.size
        )
        courses: dict[tuple[str, str], MemberStatus] = {}
        seen: set[tuple[str, str]] = set()
        awaited = self._wakeups({ref for _, _, ref, _, _ in batch})
        for position, record_id, ref, category, obligation in batch:
            where = build.of(record_id)
            self._member_place(position, record_id, where)
            categories = split_categories(category)
            leaf = member_leaf(record_id, ref, categories, build.purpose)
            chunk, offset = divmod(position, CHUNK_LEAVES)
            stored = self.window.get(chunk, b"")[offset * HASH_SIZE : (offset + 1) * HASH_SIZE]
            if leaf != stored:
                raise VerificationError(
                    f"the member row does not match the leaf at position {position} that "
                    f"entry {build.seq} signs: its record id, subject or category was changed",
                    subject=where,
                )
            self.live += 1
            history = histories.get(ref, [])
            key = (ref, category)
            # What depends on the subject and categories only is checked once per batch.
            if key not in seen:
                seen.add(key)
                _eligible_when_checked(self.check.policies, history, categories, build, where)
                self._awaits(history, awaited.get(ref, set()), where)
            row = obligations.get(obligation) if obligation is not None else None
            if obligation is not None:
                self._pointed_row(obligation, row, position, record_id, where)
                self.pointed += 1
            if self.pending is not None and self.pending(position):
                continue  # a policy's re-evaluation has yet to reach it
            course = courses.get(key)
            if course is None:
                course = courses[key] = member_course(
                    self.check.policies,
                    history,
                    categories,
                    build.terms,
                    self.check.state.swept_until,
                )
            _obligation_is_course(course, row, where, self.check.state.swept_until)
        # Chunks before the last member's are done with.
        last_chunk = batch[-1][0] // CHUNK_LEAVES
        for chunk in [c for c in self.window if c < last_chunk]:
            del self.window[chunk]

    def _member_place(self, position: int, record_id: str, where: str) -> None:
        if position == self.last_position:
            raise VerificationError(
                f"shares position {position} with another member", subject=where
            )
        if not 0 <= position < self.build.records:
            raise VerificationError(
                f"has position {position}, but the build recorded {self.build.records}",
                subject=where,
            )
        order = record_order(record_id)
        if order <= self.last_record and self.last_position >= 0:
            raise VerificationError(
                f"is at position {position}, after a record id that sorts after it: "
                "record ids in byte order must follow positions",
                subject=where,
            )
        self.last_position, self.last_record = position, order

    def _pointed_row(
        self,
        obligation: int,
        row: _ObligationRow | None,
        position: int,
        record_id: str,
        where: str,
    ) -> None:
        if row is None:
            raise VerificationError(
                f"points at obligation {obligation}, which does not exist: it was deleted",
                subject=where,
            )
        if row.status != "open" or row.closed_seq is not None or row.closed_time is not None:
            raise VerificationError(
                f"points at obligation {obligation}, which is {row.status}, not open",
                subject=where,
            )
        if (row.build, row.position, row.record_id) != (self.build.seq, position, record_id):
            raise VerificationError(
                f"points at obligation {obligation}, which is for build {row.build} position "
                f"{row.position} record {row.record_id!r}",
                subject=where,
            )

    def _obligation_rows(self, ids: Sequence[int]) -> dict[int, _ObligationRow]:
        found: dict[int, _ObligationRow] = {}
        for chunk in in_chunks(sorted(ids)):
            for row in self.check.session.execute(
                text(
                    "SELECT id, build, position, record_id, reason, cause, cause_time, due, "
                    "status, closed_seq, closed_time FROM dataset_obligations WHERE id IN "
                    f"({', '.join(str(int(i)) for i in chunk)})"
                )
            ):
                found[row[0]] = _ObligationRow(*row)
        return found

    def _wakeups(self, refs: Iterable[str]) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for chunk in in_chunks(sorted(refs)):
            placeholders = ", ".join(f":r{i}" for i in range(len(chunk)))
            for ref, at in self.check.session.execute(
                text(f"SELECT ref, at FROM dataset_wakeups WHERE ref IN ({placeholders})"),
                {f"r{i}": ref for i, ref in enumerate(chunk)},
            ):
                found.setdefault(ref, set()).add(at)
        return found

    def _awaits(self, history: Sequence[TimedEntry], awaited: set[str], where: str) -> None:
        """The instants after `swept_until` at which the member's answer may change by
        itself (a decision taking effect or expiring) are awaited: else nothing would
        look at it then."""
        now = self.check.state.swept_until
        for instant in sorted(future_instants(history, now)):
            if instant > self.build.at and instant not in awaited:
                raise VerificationError(
                    f"its subject has a decision taking effect or expiring at {instant}, but "
                    "no wakeup awaits it: its obligation would not be opened then",
                    subject=where,
                )

    def _check_open_obligations(self) -> None:
        build = self.build
        placeholder = "?" if self.conn.dialect.paramstyle == "qmark" else "%s"
        open_rows = self.conn.exec_driver_sql(
            "SELECT COUNT(*) FROM dataset_obligations WHERE build = "
            f"{placeholder} AND status = 'open'",
            (build.seq,),
        ).scalar_one()
        if open_rows == self.pointed:
            return
        # Rare: find one that no member points at, to name it.
        for number, record_id in self.conn.exec_driver_sql(
            "SELECT o.id, o.record_id FROM dataset_obligations o WHERE o.build = "
            f"{placeholder} AND o.status = 'open' AND NOT EXISTS (SELECT 1 FROM "
            "dataset_members m WHERE m.build = o.build AND m.obligation = o.id) "
            "ORDER BY o.id LIMIT 1",
            (build.seq,),
        ):
            raise VerificationError(
                f"obligation {number} is open, but no member points at it: the record was "
                "deleted without a purge, or the member row was changed",
                subject=build.of(record_id),
            )
        raise AssertionError("open obligations differ from those pointed at, yet none is unpointed")


def _eligible_when_checked(
    policies: Sequence[PublishedPolicy],
    history: Sequence[TimedEntry],
    categories: Sequence[str],
    build: _Build,
    where: str,
) -> None:
    """Every member was eligible when its build was checked (SPEC §3.4 at (checked_at,
    at)): the premise of `member_course`."""
    policy = None
    for published in policies:
        if published.seq < build.checked_at:
            policy = published.policy
    assert policy is not None, "a ledger publishes its policy at genesis"
    state, decisions = _state_and_decisions(e for e in history if e.seq < build.checked_at)
    for category in categories:
        answer = evaluate_eligibility(policy, state, decisions, category, build.purpose, build.at)
        if not answer.eligible:
            raise VerificationError(
                f"was not eligible when the build was checked (at tree size "
                f"{build.checked_at}, {build.at}): {category} is {answer.reason}",
                subject=where,
            )


def _obligation_is_course(
    course: MemberStatus, row: _ObligationRow | None, where: str, instant: str
) -> None:
    """The member's obligation is what its course says at `instant`."""
    if course.eligible:
        if row is not None:
            raise VerificationError(
                f"is eligible at {instant}, but has open obligation {row.id}", subject=where
            )
        return
    assert course.cause_time is not None
    assert course.policy is not None
    if row is None:
        raise VerificationError(
            f"is not eligible since {course.cause_time} ({course.reason}, entry "
            f"{course.cause}), but has no open obligation",
            subject=where,
        )
    expected = {
        "reason": course.reason,
        "cause": course.cause,
        "cause_time": course.cause_time,
        "due": due_time(course.cause_time, course.policy.purge_within),
    }
    stored: Mapping[str, object] = {
        "reason": row.reason,
        "cause": row.cause,
        "cause_time": row.cause_time,
        "due": row.due,
    }
    for name, value in expected.items():
        if stored[name] != value:
            raise VerificationError(
                f"obligation {row.id} says {name} {stored[name]!r}, but the log gives "
                f"{value!r} at {instant}",
                subject=where,
            )
