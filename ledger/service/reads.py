"""The reading side of the ledger: one consistent snapshot of the log and its projections.

`LogSnapshot` holds every query more than one caller needs (entries, checkpoints,
proofs, tiles, evidence bundles, the key in force, subjects and their refusal
when unknown or erased), so the reports and the API read the log without
opening sessions of their own; `ReadModel` answers the facade's reads with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, NoReturn

import orjson
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from ledger.consent.eligibility import Decision, eligibility_matrix
from ledger.consent.entries import EntryKind
from ledger.consent.policy import Policy
from ledger.consent.projection import SubjectRow
from ledger.consent.subjects import erased_id_hash, validate_subject_id
from ledger.errors import Conflict, NotFound, NotInitialized
from ledger.service.checker import Checker
from ledger.service.policies import PolicyCache
from ledger.service.views import SubjectView
from ledger.store.db import read_session
from ledger.store.schema import (
    CheckpointRow,
    ConsentDecision,
    ErasedSubject,
    LogEntryRow,
    SubjectMapping,
    SubjectVersion,
)
from ledger.timestamps import format_timestamp, normalize_timestamp, utc_now
from ledger.tlog import log, merkle
from ledger.tlog.evidence import EvidenceBundle, EvidenceEntry
from ledger.tlog.log import DbNodeReader, LogEntry, SealedAppend
from ledger.tlog.notes import VerifierKey
from ledger.tlog.tiles import TileAddress, read_tile

# Entries read per query when streaming a range of the log.
STREAM_CHUNK = 20_000


class CheckpointNote(NamedTuple):
    """A stored checkpoint: the tree size it covers and its signed note."""

    tree_size: int
    note: str


class SubjectLink(NamedTuple):
    """What links a subject id to the log: its reference and the salt of its commitment."""

    ref: str
    salt: bytes


# --- queries shared by the reads and the writes -------------------------------------------


def is_erased(session: Session, subject_id: str, secret: bytes) -> bool:
    return session.get(ErasedSubject, erased_id_hash(secret, subject_id)) is not None


def refuse_unknown_subject(session: Session, subject_id: str, secret: bytes) -> NoReturn:
    """For a subject id with no mapping: Conflict if it was erased, else NotFound."""
    if is_erased(session, subject_id, secret):
        raise Conflict(f"subject {subject_id!r} was erased")
    raise NotFound(f"subject {subject_id!r} is not registered")


def latest_subject_row(session: Session, ref: str) -> SubjectRow | None:
    """The subject's latest attribute version, as the projection hook sees it."""
    row = session.execute(
        select(SubjectVersion)
        .where(col(SubjectVersion.ref) == ref)
        .order_by(col(SubjectVersion.seq).desc())
        .limit(1)
    ).scalar_one_or_none()
    if row is None:
        return None
    return {
        "ref": row.ref,
        "seq": row.seq,
        "jurisdiction": row.jurisdiction,
        "minor": row.minor,
        "erased": row.erased,
    }


def verifier_key_before(session: Session, size: int) -> str:
    """The key announced last before tree size `size`: the one its checkpoint is signed by."""
    row = session.execute(
        select(col(LogEntryRow.seq), col(LogEntryRow.canonical))
        .where(
            col(LogEntryRow.kind).in_((EntryKind.LEDGER_INITIALIZED, EntryKind.KEY_ADDED)),
            col(LogEntryRow.seq) < size,
        )
        .order_by(col(LogEntryRow.seq).desc())
        .limit(1)
    ).first()
    if row is None:
        raise NotInitialized("no ledger in this database: run `consent-ledger init`")
    key = str(LogEntry.from_canonical(row[0], row[1]).data["verifier_key"])
    VerifierKey.parse(key)
    return key


# --- one snapshot -------------------------------------------------------------------------


class LogSnapshot:
    """Reads of the log and its projections, all from one read transaction."""

    def __init__(self, session: Session, erasure_secret: Callable[[], bytes]) -> None:
        self._session = session
        self._erasure_secret = erasure_secret

    # The log

    def tree_size(self) -> int:
        return log.tree_size(self._session)

    def origin(self) -> str:
        return log.origin(self._session)

    def latest_checkpoint(self) -> CheckpointNote:
        row = log.latest_checkpoint(self._session)
        return CheckpointNote(row.tree_size, row.note)

    def checkpoint_at(self, size: int) -> str:
        """The signed note of the checkpoint of exactly `size`."""
        return log.checkpoint_at(self._session, size).note

    def checkpoints_between(self, first: int, last: int) -> list[tuple[int, bytes]]:
        """(tree size, root) of every checkpoint with first < size ≤ last, by size."""
        rows = self._session.execute(
            select(col(CheckpointRow.tree_size), col(CheckpointRow.root))
            .where(col(CheckpointRow.tree_size) > first, col(CheckpointRow.tree_size) <= last)
            .order_by(col(CheckpointRow.tree_size))
        )
        return [(tree_size, root) for tree_size, root in rows]

    def read_entry(self, seq: int) -> LogEntry:
        return log.read_entry(self._session, seq)

    def read_entries(self, start: int, limit: int) -> list[LogEntry]:
        return log.read_entries(self._session, start, limit)

    def entries_of_subject(self, ref: str, *, before: int | None = None) -> list[LogEntry]:
        """Every entry about the subject `ref` (with seq < `before`), in log order."""
        return self._entries_where(col(LogEntryRow.subject) == ref, before)

    def policy_entries(self, *, before: int) -> list[LogEntry]:
        """Every `policy.published` entry with seq < `before`, in log order."""
        return self._entries_where(col(LogEntryRow.kind) == EntryKind.POLICY_PUBLISHED, before)

    def _entries_where(self, condition: Any, before: int | None) -> list[LogEntry]:
        query = select(col(LogEntryRow.seq), col(LogEntryRow.canonical)).where(condition)
        if before is not None:
            query = query.where(col(LogEntryRow.seq) < before)
        rows = self._session.execute(query.order_by(col(LogEntryRow.seq)))
        return [LogEntry.from_canonical(seq, canonical) for seq, canonical in rows]

    def first_at_or_after(self, moment: str, size: int) -> int:
        """The first seq whose time is at or after `moment` (`size` if none): times never
        decrease, so a binary search over entry times finds it."""
        low, high = 0, size
        while low < high:
            middle = (low + high) // 2
            if self._entry_time(middle) < moment:
                low = middle + 1
            else:
                high = middle
        return low

    def _entry_time(self, seq: int) -> str:
        canonical = self._session.execute(
            select(col(LogEntryRow.canonical)).where(col(LogEntryRow.seq) == seq)
        ).scalar_one()
        return str(orjson.loads(canonical)["time"])

    def stream_entries(
        self, first: int, last: int, progress: Callable[[int, int], None] | None = None
    ) -> Iterator[tuple[int, bytes]]:
        """(seq, canonical bytes) of entries first … last - 1, read in chunks."""
        # The DBAPI cursor directly: SQLAlchemy's per-row processing would cost more
        # than everything a report does per entry.
        conn = self._session.connection()
        placeholder = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        sql = (
            f"SELECT seq, canonical FROM log_entries WHERE seq >= {placeholder} "
            f"AND seq < {placeholder} ORDER BY seq"
        )
        cursor = conn.connection.cursor()
        try:
            for start in range(first, last, STREAM_CHUNK):
                end = min(start + STREAM_CHUNK, last)
                cursor.execute(sql, (start, end))
                rows = cursor.fetchall()
                if len(rows) != end - start:
                    raise NotFound(f"entries {start}..{end - 1} are incomplete: run `verify`")
                for seq, canonical in rows:
                    yield seq, bytes(canonical)
                if progress is not None:
                    progress(end - first, last - first)
        finally:
            cursor.close()

    # Proofs

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return log.inclusion_proof(self._session, index, size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        return log.consistency_proof(self._session, old_size, new_size)

    def frontier(self, size: int) -> list[bytes]:
        """The roots of the perfect subtrees left of `size`, left to right."""
        keys = merkle.root_node_keys(size)
        stored = DbNodeReader(self._session).read_nodes(keys)
        return [stored[key] for key in keys]

    def tile(self, address: TileAddress) -> bytes:
        return read_tile(self._session, address)

    def bundle(self, entries: Sequence[LogEntry], size: int, note: str) -> EvidenceBundle:
        """An evidence bundle of `entries`, proven into the checkpoint of `size` (`note`)."""
        return EvidenceBundle(
            verifier_key=verifier_key_before(self._session, size),
            checkpoint=note,
            entries=tuple(
                EvidenceEntry(
                    index=entry.seq,
                    canonical=entry.canonical,
                    inclusion=tuple(log.inclusion_proof(self._session, entry.seq, size)),
                )
                for entry in entries
            ),
        )

    # Subjects and projections

    def subject(self, subject_id: str) -> SubjectLink:
        """The subject's link to the log; Conflict if it was erased, NotFound if never seen."""
        mapping = self._session.get(SubjectMapping, subject_id)
        if mapping is None:
            refuse_unknown_subject(self._session, subject_id, self._erasure_secret())
        return SubjectLink(mapping.ref, mapping.salt)

    def registered_seq(self, ref: str) -> int:
        seq = self._session.scalar(
            select(func.min(col(SubjectVersion.seq))).where(col(SubjectVersion.ref) == ref)
        )
        return int(seq or 0)

    def decision_rows(self, ref: str) -> list[dict[str, Any]]:
        """The subject's recorded decisions, in log order, as the projection holds them."""
        rows = self._session.execute(
            select(ConsentDecision)
            .where(col(ConsentDecision.ref) == ref)
            .order_by(col(ConsentDecision.seq))
        ).scalars()
        return [
            {
                "seq": row.seq,
                "category": row.category,
                "purpose": row.purpose,
                "decision": row.decision,
                "explicit": row.explicit,
                "method": row.method,
                "notice": row.notice,
                "effective": row.effective,
                "expires": row.expires,
            }
            for row in rows
        ]

    def projection_before(
        self, first: int
    ) -> tuple[dict[str, tuple[str | None, bool]], dict[str, list[Decision]]]:
        """Subjects (jurisdiction, minor) and their decisions by ref, as of tree size `first`.

        Erased subjects are left out, with their decisions.
        """
        prior: dict[str, tuple[str | None, bool]] = {}
        decisions: dict[str, list[Decision]] = {}
        if first == 0:
            return prior, decisions
        conn = self._session.connection()
        for ref, jurisdiction, minor, erased in conn.execute(
            select(
                col(SubjectVersion.ref),
                col(SubjectVersion.jurisdiction),
                col(SubjectVersion.minor),
                col(SubjectVersion.erased),
            )
            .where(col(SubjectVersion.seq) < first)
            .order_by(col(SubjectVersion.seq))
        ):
            if erased:
                prior.pop(ref, None)
                decisions.pop(ref, None)
            else:
                prior[ref] = (jurisdiction, bool(minor))
        for row in conn.execute(
            select(
                col(ConsentDecision.seq),
                col(ConsentDecision.ref),
                col(ConsentDecision.category),
                col(ConsentDecision.purpose),
                col(ConsentDecision.decision),
                col(ConsentDecision.explicit),
                col(ConsentDecision.effective),
                col(ConsentDecision.expires),
            ).where(col(ConsentDecision.seq) < first)
        ):
            seq, ref, category, purpose, decision, explicit, effective, expires = row
            if ref in prior:
                decisions.setdefault(ref, []).append(
                    Decision(seq, category, purpose, decision, bool(explicit), effective, expires)  # type: ignore[arg-type]
                )
        return prior, decisions


# --- the facade's reads -------------------------------------------------------------------


class ReadModel:
    """The ledger's reads, each in one snapshot: subjects, histories, receipts, the log."""

    def __init__(
        self,
        engine: Engine,
        erasure_secret: Callable[[], bytes],
        policies: PolicyCache,
        checker: Checker,
    ) -> None:
        self._engine = engine
        self._erasure_secret = erasure_secret
        self._policies = policies
        self._checker = checker
        # For the parts that must tell an erased id from one never seen.
        self.erasure_secret = erasure_secret

    @contextmanager
    def snapshot(self) -> Iterator[LogSnapshot]:
        with read_session(self._engine) as session:
            yield LogSnapshot(session, self._erasure_secret)

    def current_policy(self) -> Policy:
        with read_session(self._engine) as session:
            return self._policies.current(session)

    def subject_view(self, subject_id: str, *, at: str | None = None) -> SubjectView:
        """Current attributes, decisions and eligibility for every category × purpose."""
        subject_id = validate_subject_id(subject_id)
        moment = format_timestamp(utc_now()) if at is None else normalize_timestamp(at, field="at")
        with read_session(self._engine) as session:
            snapshot = LogSnapshot(session, self._erasure_secret)
            size = snapshot.tree_size()
            link = snapshot.subject(subject_id)
            version, policy = self._policies.at(session, size)
            states, decisions = self._checker.subject_states(session, [subject_id], size, size)
            registered_seq = snapshot.registered_seq(link.ref)
            decision_rows = snapshot.decision_rows(link.ref)
        state = states[subject_id]
        subject_decisions = decisions.get(subject_id, [])
        matrix = eligibility_matrix(policy, state, subject_decisions, moment)
        return SubjectView(
            subject_id=subject_id,
            ref=link.ref,
            jurisdiction=state.jurisdiction,
            minor=state.minor,
            regime=policy.regime_of(state.jurisdiction),
            registered_seq=registered_seq,
            decisions=decision_rows,
            eligibility=matrix,
            checked_at=size,
            policy_version=version,
            at=moment,
        )

    def subject_history(self, subject_id: str) -> EvidenceBundle:
        """An evidence bundle of every entry about the subject, against the latest checkpoint."""
        subject_id = validate_subject_id(subject_id)
        with self.snapshot() as snapshot:
            checkpoint = snapshot.latest_checkpoint()
            link = snapshot.subject(subject_id)
            entries = snapshot.entries_of_subject(link.ref)
            return snapshot.bundle(entries, checkpoint.tree_size, checkpoint.note)

    def receipt(self, sealed: SealedAppend) -> EvidenceBundle:
        """The evidence bundle of a write: its entries, proven into its own checkpoint."""
        with self.snapshot() as snapshot:
            return snapshot.bundle(sealed.entries, sealed.tree_size, sealed.checkpoint)

    def entries(self, start: int, limit: int) -> list[LogEntry]:
        with self.snapshot() as snapshot:
            return snapshot.read_entries(start, limit)

    def entry(self, seq: int) -> LogEntry:
        with self.snapshot() as snapshot:
            return snapshot.read_entry(seq)

    def checkpoint(self) -> str:
        with self.snapshot() as snapshot:
            return snapshot.latest_checkpoint().note

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> dict[str, Any]:
        with self.snapshot() as snapshot:
            size = snapshot.tree_size() if tree_size is None else tree_size
            proof = snapshot.inclusion_proof(index, size)
            leaf = snapshot.read_entry(index).leaf_hash
        return {"index": index, "tree_size": size, "leaf_hash": leaf, "hashes": proof}

    def consistency_proof(self, old_size: int, new_size: int) -> dict[str, Any]:
        with self.snapshot() as snapshot:
            proof = snapshot.consistency_proof(old_size, new_size)
        return {"old_size": old_size, "new_size": new_size, "hashes": proof}

    def tile(self, address: TileAddress) -> bytes:
        with self.snapshot() as snapshot:
            return snapshot.tile(address)
