"""Full verification of a stored ledger, recomputing everything from canonical bytes.

The steps (the first failure stops verification and names the entry,
checkpoint or subject at fault). The log is read once, in seq order and in
chunks; steps 1-3 run chunk by chunk, in that order, the rest at the end:

1. Entries: seqs run 0..n-1 with no gap; bytes are canonical JSON whose
   `seq` is the row's seq; the row's kind and subject columns match.
2. Projections: replaying the entries gives exactly the rows stored in
   `subject_versions`, `consent_decisions` and `policy_versions`, and no
   row lies outside the log.
3. Checkpoints: at each stored checkpoint the root recomputed from the
   entries equals the signed root, the note names this log's origin, and it
   carries a valid signature by a key trusted at the previous checkpoint and
   by every key announced since (which is how rotation is followed).
4. Tree nodes (`tree.py`): every stored Merkle node equals the one recomputed from
   the entries, so proofs served from them are sound.
5. Subjects: every mapping row's salt and id open the commitment of its
   `subject.registered` entry, no erased subject has one; every erasure
   record points at an erasure and every erasure has one.
6. Head: the ledger's recorded size is the number of entries, and the last
   checkpoint covers all of them.
7. External checkpoints (saved earlier elsewhere): each is signed by a key of
   this log and its root equals the root recomputed at its size, which proves
   the log has not been rolled back, truncated or forked since.
8. Datasets (`datasets.py`): every build's stored leaves give the `members_root`
   its entry signs, every live member is the leaf at its position and was eligible
   when recorded, and the purge obligations are exactly what the log gives at the
   instant the tables claim to be exact at (SPEC §7). It runs last: it trusts the
   build and removal rows step 2 checked, and it is the costliest per row.

Every table is read as plain DBAPI tuples through one ordered cursor each
(server-side on PostgreSQL), so the cost is the parsing and hashing, not the
reading.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, NoReturn

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ledger.consent.entries import KEY_KINDS, KINDS, SUBJECT_KINDS, EntryKind, subject_of
from ledger.consent.projection import PROJECTION_COLUMNS, Projector
from ledger.consent.subjects import commitment
from ledger.errors import InvalidInput, NotInitialized, VerificationError
from ledger.gcpause import no_gc
from ledger.store.db import read_session
from ledger.store.schema import LedgerState
from ledger.tlog import merkle
from ledger.tlog.canonical import parse_canonical
from ledger.tlog.log import LogEntry
from ledger.tlog.notes import (
    Checkpoint,
    Note,
    VerifierKey,
    b64,
    open_checkpoint,
    verify_note_signatures,
)
from ledger.verify.datasets import check_datasets, count_members
from ledger.verify.rows import OrderedRows
from ledger.verify.tree import check_stored_tree

# Compared once per entry: plain strings (a member's attribute lookup costs more).
_REGISTERED = EntryKind.SUBJECT_REGISTERED.value
_ERASED = EntryKind.SUBJECT_ERASED.value


@dataclass
class VerifyReport:
    origin: str
    entries: int
    checkpoints: int
    subjects: int
    root: str
    external_checkpoints: list[int] = field(default_factory=list)
    datasets: int = 0  # builds checked
    members: int = 0  # live members checked

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
    with no_gc(), read_session(engine) as session:
        return _Verifier(session, external_checkpoints, trusted_key, progress).run()


@dataclass(frozen=True, slots=True)
class _KeyEvent:
    """A key announced or retired by an entry: it takes effect at the next checkpoint."""

    seq: int
    kind: str
    text: str
    key: VerifierKey | None


class _Verifier:
    def __init__(
        self,
        session: Session,
        external: Sequence[str],
        trusted_key: VerifierKey | None,
        progress: Progress | None,
    ) -> None:
        self.session = session
        self.conn = session.connection()
        self.external_notes = list(external)
        self.trusted_key = trusted_key
        self.progress = progress
        # levels[0] holds the leaf hashes, levels[k] the hashes of the perfect
        # subtrees of 2**k leaves: the whole tree, packed, as the node store has it.
        self.levels: list[bytearray] = [bytearray()]
        self.size = 0
        self.projector = Projector()
        self.origin = ""
        self.trusted: dict[str, VerifierKey] = {}  # keys trusted at the last checkpoint
        self.announced: dict[str, VerifierKey] = {}  # added since the last checkpoint
        self.retired: set[str] = set()
        self.every_key: dict[str, VerifierKey] = {}
        self.key_events: deque[_KeyEvent] = deque()
        self.checkpoints_seen = 0
        self.previous_checkpoint_size = 0
        self.latest_key = ""
        # ref -> commitment of its subject.registered entry (and any repeat registrations).
        self.commitments: dict[str, str] = {}
        self.repeat_registrations: list[tuple[int, str, str]] = []
        self.erasures: dict[int, str] = {}  # seq of each subject.erased -> its ref

    def run(self) -> VerifyReport:
        state = self.session.get(LedgerState, 1)
        if state is None:
            raise NotInitialized("no ledger in this database: run `consent-ledger init`")
        last_seq = self.conn.exec_driver_sql("SELECT MAX(seq) FROM log_entries").scalar()
        total = 0 if last_seq is None else int(last_seq) + 1
        # Progress counts entries, then dataset members (step 8).
        members = count_members(self.conn)
        externals = [
            self._parse_external(position, note)
            for position, note in enumerate(self.external_notes)
        ]
        with ExitStack() as cursors:
            entries = cursors.enter_context(
                OrderedRows(
                    self.conn,
                    "SELECT seq, kind, subject, canonical FROM log_entries ORDER BY seq",
                )
            )
            checkpoints = cursors.enter_context(
                OrderedRows(
                    self.conn, "SELECT tree_size, root, note FROM checkpoints ORDER BY tree_size"
                )
            )
            projections = {
                table: cursors.enter_context(
                    OrderedRows(
                        self.conn,
                        f"SELECT {', '.join(columns)} FROM {table} ORDER BY seq",
                        key_at=columns.index("seq"),
                    )
                )
                for table, columns in PROJECTION_COLUMNS.items()
            }
            for batch in entries.batches():
                chunk = self._entries(batch)
                self._compare_projection(chunk, projections)
                self._grow_levels()
                for row in checkpoints.below(self.size + 1):
                    self._check_checkpoint(*row)
                if self.progress:
                    self.progress(self.size, max(total, self.size) + members)
            for tree_size, _, _ in checkpoints.below(None):
                raise VerificationError(
                    f"signs a tree of size {tree_size} but the log has only {self.size} "
                    "entries: entries were deleted or the log was truncated",
                    subject=f"checkpoint {tree_size}",
                )
            for table, rows in projections.items():
                for row in rows.below(None):
                    seq = row[rows.key_at]
                    raise VerificationError(
                        f"{table} has a row for entry {seq}, which the log does not hold",
                        subject=f"entry {seq}",
                    )
            check_stored_tree(self.conn, self.levels)
            subjects = self._check_subjects()
        self._check_head(state)
        for position, checkpoint in externals:
            self._check_external(position, checkpoint)
        datasets = check_datasets(self.session, self.size, self._members_progress(members))
        return VerifyReport(
            origin=self.origin,
            entries=self.size,
            checkpoints=self.checkpoints_seen,
            subjects=subjects,
            root=b64(self._root(self.size)),
            external_checkpoints=[checkpoint.size for _, checkpoint in externals],
            datasets=datasets.builds,
            members=datasets.members,
        )

    def _members_progress(self, members: int) -> Callable[[int], None] | None:
        progress, entries = self.progress, self.size
        if progress is None:
            return None
        return lambda done: progress(entries + done, entries + members)

    # 1. entries -----------------------------------------------------------------------------

    def _entries(self, rows: list[tuple[Any, ...]]) -> list[LogEntry]:
        """Check one chunk of entry rows; hash them into the tree."""
        entries = []
        leaves = self.levels[0]
        sha256 = hashlib.sha256
        expected = self.size
        for seq, kind, subject, canonical in rows:
            if seq != expected:
                if seq < expected:
                    raise VerificationError(
                        "is stored before the first entry of the log", subject=f"entry {seq}"
                    )
                raise VerificationError(
                    f"is missing (the next stored entry is {seq}): entries were deleted",
                    subject=f"entry {expected}",
                )
            try:
                body = parse_canonical(canonical)
            except VerificationError as exc:
                raise VerificationError(f"bytes changed: {exc}", subject=f"entry {seq}") from exc
            # The checks of `_check_entry_shape`, inlined for the common case.
            data: Any = body.get("data")
            stated = body.get("kind")
            if (
                body.get("seq") != seq
                or body.get("v") != 1
                or type(data) is not dict
                or kind != stated
                or stated not in SUBJECT_KINDS
                or subject != data.get("subject")
                or seq == 0
            ):
                self._check_entry_shape(seq, body, kind, subject)
            if stated == _REGISTERED:
                self._registered(seq, data, subject)
            elif stated == _ERASED:
                self.erasures[seq] = subject
            leaves += sha256(b"\x00" + canonical).digest()
            entries.append(LogEntry(seq, canonical, body))
            expected += 1
        self.size = expected
        return entries

    def _check_entry_shape(
        self, seq: int, body: dict[str, Any], kind: str, subject: str | None
    ) -> None:
        where = f"entry {seq}"
        if body.get("seq") != seq:
            raise VerificationError(
                f"bytes say seq {body.get('seq')!r}: entries were reordered or rewritten",
                subject=where,
            )
        if body.get("v") != 1 or not isinstance(body.get("data"), dict):
            raise VerificationError("bytes changed: not a version 1 entry", subject=where)
        stated = body.get("kind")
        if not isinstance(stated, str) or stated not in KINDS:
            raise VerificationError(f"unknown kind {stated!r}", subject=where)
        if kind != stated:
            raise VerificationError(
                f"row says kind {kind!r} but the bytes say {stated!r}", subject=where
            )
        data = body["data"]
        expected_subject = subject_of(stated, data)
        if subject != expected_subject:
            raise VerificationError(
                f"row says subject {subject!r} but the bytes say {expected_subject!r}",
                subject=where,
            )
        if seq == 0:
            if stated != EntryKind.LEDGER_INITIALIZED:
                raise VerificationError("the first entry is not ledger.initialized", subject=where)
            origin = data.get("origin")
            if not isinstance(origin, str):
                raise VerificationError("ledger.initialized names no origin", subject=where)
            self.origin = origin
        if stated in KEY_KINDS:
            self._key_entry(seq, stated, data)

    def _key_entry(self, seq: int, kind: str, data: dict[str, Any]) -> None:
        text = data.get("verifier_key")
        where = f"entry {seq}"
        if not isinstance(text, str):
            raise VerificationError("names no verifier key", subject=where)
        if kind == EntryKind.KEY_RETIRED:
            self.key_events.append(_KeyEvent(seq, kind, text, None))
            return
        try:
            key = VerifierKey.parse(text)
        except InvalidInput as exc:
            raise VerificationError(f"bad verifier key: {exc}", subject=where) from exc
        if key.name != self.origin:
            raise VerificationError(
                f"announces a key named {key.name!r}, not the origin {self.origin!r}",
                subject=where,
            )
        self.every_key[text] = key
        self.latest_key = text
        self.key_events.append(_KeyEvent(seq, kind, text, key))

    def _registered(self, seq: int, data: dict[str, Any], ref: str | None) -> None:
        promised = data.get("commitment")
        if ref is None:
            return  # no mapping row can name it
        if not isinstance(promised, str):
            promised = ""  # opens for no mapping row
        if ref in self.commitments:
            self.repeat_registrations.append((seq, ref, promised))
        else:
            self.commitments[ref] = promised

    # 2. projections ------------------------------------------------------------------------

    def _compare_projection(
        self, entries: list[LogEntry], projections: dict[str, OrderedRows]
    ) -> None:
        start, end = entries[0].seq, entries[-1].seq + 1
        # Plain tuples in the projector's column order: comparing millions of rows as
        # mappings would cost more than everything else verify does.
        for table, _columns, expected in self.projector.project(entries):
            stream = projections[table]
            actual = stream.below(end)
            if expected == actual:
                continue
            seq_at = stream.key_at
            if actual and actual[0][seq_at] < start:
                seq = actual[0][seq_at]
                raise VerificationError(
                    f"{table} has a row for entry {seq}, which the log does not hold",
                    subject=f"entry {seq}",
                )
            _name_difference(table, seq_at, expected, actual)

    # 3. checkpoints ------------------------------------------------------------------------

    def _apply_key_events(self, before: int) -> None:
        events = self.key_events
        while events and events[0].seq < before:
            event = events.popleft()
            if event.key is None:
                self.retired.add(event.text)
            else:
                self.announced[event.text] = event.key

    def _check_checkpoint(self, tree_size: int, stored_root: bytes, text: str) -> None:
        where = f"checkpoint {tree_size}"
        if tree_size <= 0:
            raise VerificationError(
                "is not at an append boundary the entries reproduce (at size 1)", subject=where
            )
        self._apply_key_events(tree_size)
        # Keys trusted at the previous checkpoint chain the log; every key
        # announced since must also have signed, proving its holder agreed.
        required = list(self.announced.values())
        chain = list(self.trusted.values()) or required
        try:
            note = Note.parse(text)
            signed = verify_note_signatures(note, chain)
            for key in required:
                if key not in signed:
                    verify_note_signatures(note, [key])
        except VerificationError as exc:
            raise VerificationError(f"signature does not verify: {exc}", subject=where) from exc
        root = self._root(tree_size)
        # The body the log would have signed; any other text is parsed to say
        # what differs. (The origin is a valid key name: its key signed.)
        if note.text != f"{self.origin}\n{tree_size}\n{b64(root)}\n" or stored_root != root:
            self._name_checkpoint_difference(note, tree_size, bytes(stored_root), root)
        self.trusted.update(self.announced)
        for retired in self.retired:
            self.trusted.pop(retired, None)
        self.announced.clear()
        self.retired.clear()
        self.previous_checkpoint_size = tree_size
        self.checkpoints_seen += 1

    def _name_checkpoint_difference(
        self, note: Note, tree_size: int, stored_root: bytes, root: bytes
    ) -> NoReturn:
        where = f"checkpoint {tree_size}"
        try:
            checkpoint = Checkpoint.parse_body(note.text)
        except VerificationError as exc:
            raise VerificationError(f"signature does not verify: {exc}", subject=where) from exc
        if checkpoint.origin != self.origin:
            raise VerificationError(f"names origin {checkpoint.origin!r}", subject=where)
        if checkpoint.size != tree_size:
            raise VerificationError(
                f"signs size {checkpoint.size}, stored at {tree_size}", subject=where
            )
        raise VerificationError(
            "signed root does not match the entries: an entry in "
            f"{self.previous_checkpoint_size}..{tree_size - 1} was changed",
            subject=where,
        )

    # The tree, packed by level ----------------------------------------------------------------

    def _grow_levels(self) -> None:
        """Hash every pair of nodes the last chunk of leaves completed, level by level."""
        levels = self.levels
        level = 0
        while True:
            below = levels[level]
            pairs = len(below) // (2 * merkle.HASH_SIZE)
            if pairs == 0:
                return
            if level + 1 == len(levels):
                levels.append(bytearray())
            above = levels[level + 1]
            done = len(above) // merkle.HASH_SIZE
            if done == pairs:
                return
            above += merkle.pair_hashes(below, done, pairs)
            level += 1

    def _root(self, size: int) -> bytes:
        levels, width = self.levels, merkle.HASH_SIZE
        return merkle.fold_root(
            [
                bytes(levels[level][index * width : (index + 1) * width])
                for level, index in merkle.root_node_keys(size)
            ]
        )

    # 5. subjects ---------------------------------------------------------------------------

    def _check_subjects(self) -> int:
        # Storage order is one sequential read (ref order costs a random read
        # per row); only a problem found takes a second pass, in ref order, so
        # that the first bad subject is the one named.
        count, problem = self._check_mappings("SELECT subject_id, ref, salt FROM subjects")
        if problem is not None:
            _, problem = self._check_mappings(
                "SELECT subject_id, ref, salt FROM subjects ORDER BY ref"
            )
            assert problem is not None
            raise problem
        if self.repeat_registrations:
            self._check_repeat_registrations()
        recorded = set()
        for (seq,) in self.conn.exec_driver_sql("SELECT seq FROM erased_subjects ORDER BY seq"):
            if seq not in self.erasures:
                raise VerificationError(
                    "an erasure record points at an entry that is not subject.erased",
                    subject=f"entry {seq}",
                )
            recorded.add(seq)
        missing = sorted(set(self.erasures) - recorded)
        if missing:
            raise VerificationError(
                "has no erasure record: the erased id would no longer answer `erased`",
                subject=f"entry {missing[0]}",
            )
        return count

    def _check_mappings(self, sql: str) -> tuple[int, VerificationError | None]:
        """Check the mapping rows `sql` reads: how many, and the first problem (if any)."""
        count = 0
        erased = {ref: seq for seq, ref in self.erasures.items()}
        with OrderedRows(self.conn, sql) as rows:
            for batch in rows.batches():
                for subject_id, ref, salt in batch:
                    where = f"subject {ref}"
                    promised = self.commitments.get(ref)
                    if promised is None:
                        return count, VerificationError(
                            "has no subject.registered entry", subject=where
                        )
                    if commitment(bytes(salt), subject_id) != promised:
                        return count, VerificationError(
                            "mapping row does not open the commitment in entry "
                            f"{self._registration_seq(ref)}: the subject id or salt was changed",
                            subject=where,
                        )
                    if ref in erased:
                        return count, VerificationError(
                            f"has a mapping row although entry {erased[ref]} erased it: the "
                            "link to the person was restored",
                            subject=where,
                        )
                    count += 1
        return count, None

    def _check_repeat_registrations(self) -> None:
        # Rare: a ref registered twice. Its mapping row must open both commitments.
        for seq, ref, promised in self.repeat_registrations:
            placeholder = "?" if self.conn.dialect.paramstyle == "qmark" else "%s"
            for subject_id, salt in self.conn.exec_driver_sql(
                f"SELECT subject_id, salt FROM subjects WHERE ref = {placeholder}", (ref,)
            ):
                if commitment(bytes(salt), subject_id) != promised:
                    raise VerificationError(
                        f"mapping row does not open the commitment in entry {seq}: the "
                        "subject id or salt was changed",
                        subject=f"subject {ref}",
                    )

    def _registration_seq(self, ref: str) -> int:
        placeholder = "?" if self.conn.dialect.paramstyle == "qmark" else "%s"
        seq: int = self.conn.exec_driver_sql(
            f"SELECT MIN(seq) FROM log_entries WHERE kind = {placeholder} "
            f"AND subject = {placeholder}",
            (EntryKind.SUBJECT_REGISTERED.value, ref),
        ).scalar_one()
        return seq

    # 6. head -------------------------------------------------------------------------------

    def _check_head(self, state: LedgerState) -> None:
        size = self.size
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
        if size and self.previous_checkpoint_size != size:
            raise VerificationError(
                f"entries {self.previous_checkpoint_size}..{size - 1} are not covered by any "
                "checkpoint",
                subject=f"entry {self.previous_checkpoint_size}",
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
        if checkpoint.size > self.size:
            raise VerificationError(
                f"covers {checkpoint.size} entries but the log now holds {self.size}: "
                "the log was rolled back or truncated",
                subject=where,
            )
        if self._root(checkpoint.size) != checkpoint.root:
            raise VerificationError(
                "its root differs from the log's at that size: the log forked or was rewritten",
                subject=where,
            )


def _name_difference(
    table: str, seq_at: int, expected: list[tuple[Any, ...]], actual: list[tuple[Any, ...]]
) -> NoReturn:
    """Raise for the first entry whose rows differ between the replay and the table."""
    columns = PROJECTION_COLUMNS[table]
    replayed: dict[int, list[tuple[Any, ...]]] = {}
    stored: dict[int, list[tuple[Any, ...]]] = {}
    for rows, by_seq in ((expected, replayed), (actual, stored)):
        for row in rows:
            by_seq.setdefault(row[seq_at], []).append(row)
    for seq in sorted(set(replayed) | set(stored)):
        if replayed.get(seq) != stored.get(seq):
            raise VerificationError(
                f"{table} row for entry {seq} differs from a replay of the log: "
                f"stored {_described(columns, stored.get(seq))}, replay gives "
                f"{_described(columns, replayed.get(seq))}",
                subject=f"entry {seq}",
            )
    raise AssertionError("rows differ but no entry's rows do")  # pragma: no cover


def _described(columns: tuple[str, ...], rows: list[tuple[Any, ...]] | None) -> str:
    if not rows:
        return "nothing"
    return " and ".join(repr(dict(zip(columns, row, strict=True))) for row in rows)
