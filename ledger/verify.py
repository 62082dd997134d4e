"""Full verification of a stored ledger, recomputing everything from canonical bytes.

The steps, in the order they run (the first failure stops verification and
names the entry, checkpoint or subject at fault):

1. Entries: seqs run 0..n-1 with no gap; bytes are canonical JSON whose
   `seq` is the row's seq; the row's kind and subject columns match.
2. Checkpoints: at each stored checkpoint the root recomputed from the
   entries equals the signed root, the note names this log's origin, and it
   carries a valid signature by a key trusted at the previous checkpoint and
   by every key announced since (which is how rotation is followed).
3. Projections: replaying the entries gives exactly the rows stored in
   `subject_versions`, `consent_decisions` and `policy_versions`.
4. Tree nodes: every stored Merkle node equals the one recomputed from the
   entries, so proofs served from them are sound.
5. Subjects: every mapping row's salt and id open the commitment of its
   `subject.registered` entry; every erasure record points at an erasure.
6. Head: the ledger's recorded size is the number of entries, and the last
   checkpoint covers all of them.
7. External checkpoints (saved earlier elsewhere): each is signed by a key of
   this log and its root equals the root recomputed at its size, which proves
   the log has not been rolled back, truncated or forked since.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from sqlmodel import col

from ledger import merkle
from ledger.canonical import parse_canonical
from ledger.db import read_session
from ledger.errors import InvalidInput, NotInitialized, VerificationError
from ledger.log import SUBJECT_KINDS, LogEntry
from ledger.notes import Checkpoint, VerifierKey, b64, open_checkpoint, verify_note
from ledger.projection import Projector
from ledger.schema import (
    CheckpointRow,
    ConsentDecision,
    ErasedSubject,
    LedgerState,
    LogEntryRow,
    MerkleNode,
    PolicyVersion,
    SubjectMapping,
    SubjectVersion,
)
from ledger.subjects import commitment

KNOWN_KINDS = frozenset(
    {
        "ledger.initialized",
        "key.added",
        "key.retired",
        "policy.published",
        "subject.registered",
        "subject.updated",
        "consent.recorded",
        "subject.erased",
    }
)
CHUNK = 5_000


@dataclass
class VerifyReport:
    origin: str
    entries: int
    checkpoints: int
    subjects: int
    root: str
    external_checkpoints: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "origin": self.origin,
            "entries": self.entries,
            "checkpoints": self.checkpoints,
            "subjects": self.subjects,
            "root": self.root,
            "external_checkpoints": self.external_checkpoints,
        }


Progress = Callable[[int, int], None]


def verify_ledger(
    engine: Engine,
    *,
    external_checkpoints: Sequence[str] = (),
    trusted_key: VerifierKey | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Verify everything; raise VerificationError naming the first problem."""
    with read_session(engine) as session:
        return _Verifier(session, external_checkpoints, trusted_key, progress).run()


class _Verifier:
    def __init__(
        self,
        session: Session,
        external: Sequence[str],
        trusted_key: VerifierKey | None,
        progress: Progress | None,
    ) -> None:
        self.session = session
        # Core connection: the hot loops skip the ORM's per-row overhead.
        self.conn = session.connection()
        self.external_notes = list(external)
        self.trusted_key = trusted_key
        self.progress = progress
        self.tree = merkle.TreeBuilder()
        self.leaves = bytearray()
        self.projector = Projector()
        self.origin = ""
        self.trusted: dict[str, VerifierKey] = {}  # keys trusted at the last checkpoint
        self.announced: dict[str, VerifierKey] = {}  # added since the last checkpoint
        self.retired: set[str] = set()
        self.every_key: dict[str, VerifierKey] = {}
        self.roots_wanted: dict[int, bytes | None] = {}
        self.checkpoints_seen = 0
        self.latest_key = ""
        self.erasures: set[int] = set()

    def run(self) -> VerifyReport:
        state = self.session.get(LedgerState, 1)
        if state is None:
            raise NotInitialized("no ledger in this database: run `consent-ledger init`")
        total = self.session.scalar(
            select(col(LogEntryRow.seq)).order_by(col(LogEntryRow.seq).desc()).limit(1)
        )
        expected_total = -1 if total is None else total
        externals = [
            self._parse_external(position, note)
            for position, note in enumerate(self.external_notes)
        ]
        for _, checkpoint in externals:
            self.roots_wanted[checkpoint.size] = None
        checkpoints = self._stream_checkpoints()
        pending_checkpoint = next(checkpoints, None)
        for start in range(0, expected_total + 1, CHUNK):
            end = min(start + CHUNK, expected_total + 1)
            entries = self._entries(start, end)
            self._compare_projection(start, end, entries)
            for entry in entries:
                self._check_keys(entry)
                self.tree.append(merkle.leaf_hash(entry.canonical))
                self.leaves += merkle.leaf_hash(entry.canonical)
                size = self.tree.size
                if size in self.roots_wanted:
                    self.roots_wanted[size] = self.tree.root()
                while pending_checkpoint is not None and pending_checkpoint.tree_size <= size:
                    self._check_checkpoint(pending_checkpoint)
                    pending_checkpoint = next(checkpoints, None)
            if self.progress:
                self.progress(end, expected_total + 1)
        size = self.tree.size
        if pending_checkpoint is not None:
            raise VerificationError(
                f"signs a tree of size {pending_checkpoint.tree_size} but the log has only "
                f"{size} entries: entries were deleted or the log was truncated",
                subject=f"checkpoint {pending_checkpoint.tree_size}",
            )
        self._check_no_rows_beyond(size)
        self._check_nodes()
        subjects = self._check_subjects()
        self._check_head(state, size)
        for position, checkpoint in externals:
            self._check_external(position, checkpoint)
        return VerifyReport(
            origin=self.origin,
            entries=size,
            checkpoints=self.checkpoints_seen,
            subjects=subjects,
            root=b64(self.tree.root()),
            external_checkpoints=[checkpoint.size for _, checkpoint in externals],
        )

    # 1. entries -----------------------------------------------------------------------------

    def _entries(self, start: int, end: int) -> list[LogEntry]:
        rows = self.conn.execute(
            select(
                col(LogEntryRow.seq),
                col(LogEntryRow.kind),
                col(LogEntryRow.subject),
                col(LogEntryRow.canonical),
            )
            .where(col(LogEntryRow.seq) >= start, col(LogEntryRow.seq) < end)
            .order_by(col(LogEntryRow.seq))
        )
        entries = []
        expected = start
        for seq, kind, subject, canonical in rows:
            where = f"entry {expected}"
            if seq != expected:
                raise VerificationError(
                    f"is missing (the next stored entry is {seq}): entries were deleted",
                    subject=where,
                )
            try:
                body = parse_canonical(canonical)
            except VerificationError as exc:
                raise VerificationError(f"bytes changed: {exc}", subject=where) from exc
            entry = LogEntry(seq=seq, canonical=canonical, body=body)
            self._check_entry_shape(entry, kind, subject, where)
            entries.append(entry)
            expected += 1
        if expected != end:
            raise VerificationError("is missing: entries were deleted", subject=f"entry {expected}")
        return entries

    def _check_entry_shape(
        self, entry: LogEntry, kind: str, subject: str | None, where: str
    ) -> None:
        body = entry.body
        if body.get("seq") != entry.seq:
            raise VerificationError(
                f"bytes say seq {body.get('seq')!r}: entries were reordered or rewritten",
                subject=where,
            )
        if body.get("v") != 1 or not isinstance(body.get("data"), dict):
            raise VerificationError("bytes changed: not a version 1 entry", subject=where)
        if body.get("kind") not in KNOWN_KINDS:
            raise VerificationError(f"unknown kind {body.get('kind')!r}", subject=where)
        if kind != body["kind"]:
            raise VerificationError(
                f"row says kind {kind!r} but the bytes say {body['kind']!r}", subject=where
            )
        expected_subject = body["data"].get("subject") if body["kind"] in SUBJECT_KINDS else None
        if subject != expected_subject:
            raise VerificationError(
                f"row says subject {subject!r} but the bytes say {expected_subject!r}",
                subject=where,
            )
        if entry.seq == 0:
            if body["kind"] != "ledger.initialized":
                raise VerificationError("the first entry is not ledger.initialized", subject=where)
            self.origin = body["data"]["origin"]

    def _check_keys(self, entry: LogEntry) -> None:
        if entry.kind in ("ledger.initialized", "key.added"):
            text = entry.data["verifier_key"]
            try:
                key = VerifierKey.parse(text)
            except InvalidInput as exc:
                raise VerificationError(
                    f"bad verifier key: {exc}", subject=f"entry {entry.seq}"
                ) from exc
            if key.name != self.origin:
                raise VerificationError(
                    f"announces a key named {key.name!r}, not the origin {self.origin!r}",
                    subject=f"entry {entry.seq}",
                )
            self.announced[text] = key
            self.every_key[text] = key
            self.latest_key = text
        elif entry.kind == "key.retired":
            self.retired.add(entry.data["verifier_key"])
        elif entry.kind == "subject.erased":
            self.erasures.add(entry.seq)

    # 2. checkpoints ------------------------------------------------------------------------

    def _stream_checkpoints(self) -> Iterator[CheckpointRow]:
        last = -1
        while True:
            rows = list(
                self.session.scalars(
                    select(CheckpointRow)
                    .where(col(CheckpointRow.tree_size) > last)
                    .order_by(col(CheckpointRow.tree_size))
                    .limit(CHUNK)
                )
            )
            if not rows:
                return
            yield from rows
            last = rows[-1].tree_size

    def _check_checkpoint(self, row: CheckpointRow) -> None:
        where = f"checkpoint {row.tree_size}"
        if row.tree_size != self.tree.size:
            raise VerificationError(
                f"is not at an append boundary the entries reproduce (at size {self.tree.size})",
                subject=where,
            )
        # Keys trusted at the previous checkpoint chain the log; every key
        # announced since must also have signed, proving its holder agreed.
        required = list(self.announced.values())
        chain = list(self.trusted.values()) or required
        try:
            note, _ = verify_note(row.note, chain)
            for key in required:
                verify_note(row.note, [key])
            checkpoint = Checkpoint.parse_body(note.text)
        except VerificationError as exc:
            raise VerificationError(f"signature does not verify: {exc}", subject=where) from exc
        if checkpoint.origin != self.origin:
            raise VerificationError(f"names origin {checkpoint.origin!r}", subject=where)
        if checkpoint.size != row.tree_size:
            raise VerificationError(
                f"signs size {checkpoint.size}, stored at {row.tree_size}", subject=where
            )
        root = self.tree.root()
        if checkpoint.root != root or row.root != root:
            first = self._previous_checkpoint_size
            raise VerificationError(
                "signed root does not match the entries: an entry in "
                f"{first}..{row.tree_size - 1} was changed",
                subject=where,
            )
        self.trusted.update(self.announced)
        for text in self.retired:
            self.trusted.pop(text, None)
        self.announced.clear()
        self.retired.clear()
        self._previous_checkpoint_size = row.tree_size
        self.checkpoints_seen += 1

    _previous_checkpoint_size = 0

    # 3. projections ------------------------------------------------------------------------

    def _compare_projection(self, start: int, end: int, entries: list[LogEntry]) -> None:
        replayed = self.projector.project(entries)
        for table, rows in replayed.items():
            # Plain tuples in the projector's column order: comparing millions of
            # rows as mappings would cost more than everything else verify does.
            columns = _PROJECTION_COLUMNS[table]
            expected = {row["seq"]: tuple(row[name] for name in columns) for row in rows}
            actual = self._rows(table, columns, start, end)
            if expected == actual:
                continue
            for seq in sorted(set(expected) | set(actual)):
                if expected.get(seq) != actual.get(seq):
                    raise VerificationError(
                        f"{table} row for entry {seq} differs from a replay of the log: "
                        f"stored {_described(columns, actual.get(seq))}, replay gives "
                        f"{_described(columns, expected.get(seq))}",
                        subject=f"entry {seq}",
                    )

    def _rows(
        self, table: str, columns: tuple[str, ...], start: int, end: int
    ) -> dict[int, tuple[Any, ...]]:
        seq_at = columns.index("seq")
        cursor = self.conn.exec_driver_sql(
            f"SELECT {', '.join(columns)} FROM {table} WHERE seq >= {int(start)} "
            f"AND seq < {int(end)}"
        )
        # SQLite gives booleans back as 0/1, which compare equal to False/True.
        return {row[seq_at]: tuple(row) for row in cursor}

    def _check_no_rows_beyond(self, size: int) -> None:
        for model in (SubjectVersion, ConsentDecision, PolicyVersion):
            table = model.__table__  # type: ignore[union-attr]
            seq = self.conn.execute(
                select(table.c.seq).where((table.c.seq >= size) | (table.c.seq < 0)).limit(1)
            ).scalar()
            if seq is not None:
                raise VerificationError(
                    f"{table.name} has a row for entry {seq}, which the log does not hold",
                    subject=f"entry {seq}",
                )

    # 4. tree nodes -------------------------------------------------------------------------

    def _check_nodes(self) -> None:
        level_hashes = bytes(self.leaves)
        level = 0
        while level_hashes:
            count = len(level_hashes) // merkle.HASH_SIZE
            expected_index = 0
            for index, stored in self.conn.execute(
                select(col(MerkleNode.idx), col(MerkleNode.hash))
                .where(col(MerkleNode.level) == level)
                .order_by(col(MerkleNode.idx))
            ):
                where = f"merkle node {level}/{index}"
                if index != expected_index or index >= count:
                    raise VerificationError(
                        "is missing or extra: the stored tree does not match the entries",
                        subject=where,
                    )
                offset = index * merkle.HASH_SIZE
                if stored != level_hashes[offset : offset + merkle.HASH_SIZE]:
                    first_leaf = index << level
                    raise VerificationError(
                        "does not match the entries it covers: entry bytes or tree nodes "
                        f"were changed in entries {first_leaf}..{first_leaf + (1 << level) - 1}",
                        subject=where,
                    )
                expected_index += 1
            if expected_index != count:
                raise VerificationError(
                    "is missing", subject=f"merkle node {level}/{expected_index}"
                )
            level_hashes = _next_level(level_hashes)
            level += 1

    # 5. subjects ---------------------------------------------------------------------------

    def _check_subjects(self) -> int:
        count = 0
        rows = self.session.execute(
            select(
                col(SubjectMapping.subject_id),
                col(SubjectMapping.ref),
                col(SubjectMapping.salt),
                col(LogEntryRow.seq),
                col(LogEntryRow.canonical),
            )
            .outerjoin(
                LogEntryRow,
                (col(LogEntryRow.subject) == col(SubjectMapping.ref))
                & (col(LogEntryRow.kind) == "subject.registered"),
            )
            .order_by(col(SubjectMapping.ref))
            .execution_options(yield_per=CHUNK)
        )
        for subject_id, ref, salt, seq, canonical in rows:
            where = f"subject {ref}"
            if canonical is None:
                raise VerificationError("has no subject.registered entry", subject=where)
            registered = LogEntry.from_canonical(seq, canonical).data
            if commitment(salt, subject_id) != registered.get("commitment"):
                raise VerificationError(
                    f"mapping row does not open the commitment in entry {seq}: "
                    "the subject id or salt was changed",
                    subject=where,
                )
            count += 1
        for ref, seq in self.conn.execute(
            select(col(SubjectMapping.ref), col(LogEntryRow.seq))
            .join(LogEntryRow, col(LogEntryRow.subject) == col(SubjectMapping.ref))
            .where(col(LogEntryRow.kind) == "subject.erased")
            .limit(1)
        ):
            raise VerificationError(
                f"has a mapping row although entry {seq} erased it: the link to the person "
                "was restored",
                subject=f"subject {ref}",
            )
        for seq, kind in self.conn.execute(
            select(col(ErasedSubject.seq), col(LogEntryRow.kind)).outerjoin(
                LogEntryRow,
                col(LogEntryRow.seq) == col(ErasedSubject.seq),
            )
        ):
            if kind != "subject.erased":
                raise VerificationError(
                    "an erasure record points at an entry that is not subject.erased",
                    subject=f"entry {seq}",
                )
        recorded = {seq for (seq,) in self.conn.execute(select(col(ErasedSubject.seq)))}
        missing = sorted(self.erasures - recorded)
        if missing:
            raise VerificationError(
                "has no erasure record: the erased id would no longer answer `erased`",
                subject=f"entry {missing[0]}",
            )
        return count

    # 6. head -------------------------------------------------------------------------------

    def _check_head(self, state: LedgerState, size: int) -> None:
        if state.origin != self.origin:
            raise VerificationError(
                f"ledger state names origin {state.origin!r}, the log {self.origin!r}",
                subject="ledger",
            )
        if state.tree_size != size:
            raise VerificationError(
                f"ledger state says {state.tree_size} entries, the log holds {size}",
                subject="ledger",
            )
        if state.verifier_key != self.latest_key:
            raise VerificationError(
                f"ledger state names signing key {state.verifier_key!r}, but the last key "
                f"the log announced is {self.latest_key!r}",
                subject="ledger",
            )
        if size and self._previous_checkpoint_size != size:
            raise VerificationError(
                f"entries {self._previous_checkpoint_size}..{size - 1} are not covered by any "
                "checkpoint",
                subject=f"entry {self._previous_checkpoint_size}",
            )
        if self.trusted_key is not None and str(self.trusted_key) not in self.every_key:
            raise VerificationError(
                f"the trusted key {self.trusted_key} never signed for this log", subject="ledger"
            )

    # 7. external checkpoints ---------------------------------------------------------------

    def _parse_external(self, position: int, note: str) -> tuple[int, Checkpoint]:
        try:
            return position, Checkpoint.parse_body(note.split("\n\n", 1)[0] + "\n")
        except (VerificationError, InvalidInput) as exc:
            raise VerificationError(
                f"is not a checkpoint: {exc}", subject=f"external checkpoint #{position + 1}"
            ) from exc

    def _check_external(self, position: int, checkpoint: Checkpoint) -> None:
        where = f"external checkpoint #{position + 1} (size {checkpoint.size})"
        note = self.external_notes[position]
        try:
            open_checkpoint(note, list(self.every_key.values()), origin=self.origin)
        except VerificationError as exc:
            raise VerificationError(
                f"is not signed by any key of this log: {exc}", subject=where
            ) from exc
        if checkpoint.size > self.tree.size:
            raise VerificationError(
                f"covers {checkpoint.size} entries but the log now holds {self.tree.size}: "
                "the log was rolled back or truncated",
                subject=where,
            )
        if self.roots_wanted.get(checkpoint.size) != checkpoint.root:
            raise VerificationError(
                "its root differs from the log's at that size: the log forked or was rewritten",
                subject=where,
            )


_PROJECTION_COLUMNS = {
    "subject_versions": ("ref", "seq", "jurisdiction", "minor", "erased"),
    "consent_decisions": (
        "seq",
        "ref",
        "category",
        "purpose",
        "decision",
        "explicit",
        "method",
        "notice",
        "effective",
        "expires",
    ),
    "policy_versions": ("version", "seq", "document"),
}


def _described(columns: tuple[str, ...], row: tuple[Any, ...] | None) -> str:
    return "nothing" if row is None else repr(dict(zip(columns, row, strict=True)))


def _next_level(hashes: bytes) -> bytes:
    size = merkle.HASH_SIZE
    pairs = len(hashes) // (2 * size)
    out = bytearray()
    prefix = b"\x01"
    sha256 = hashlib.sha256
    for pair in range(pairs):
        offset = pair * 2 * size
        out += sha256(prefix + hashes[offset : offset + 2 * size]).digest()
    return bytes(out)
