"""The log: appending entries (with their Merkle nodes and a signed checkpoint)
and reading entries, checkpoints and proofs back.

An append happens inside one write transaction (`ledger.store.db.write_session`):
`LogWriter.open` reads the head under the write lock, `append` assigns seqs and
canonical bytes, and `seal` writes entries, tree nodes, projections and the
new checkpoint together. Nothing is visible to anyone until the transaction
commits, and a transaction that dies leaves no trace.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.orm import Session
from sqlmodel import col

from ledger.errors import (
    InvalidInput,
    NotFound,
    NotInitialized,
    SigningKeyError,
    VerificationError,
)
from ledger.store.db import bulk_insert
from ledger.store.schema import (
    CheckpointRow,
    LedgerState,
    LogEntryRow,
    MerkleNode,
)
from ledger.timestamps import format_timestamp, utc_now
from ledger.tlog import merkle
from ledger.tlog.canonical import canonical_bytes, parse_canonical
from ledger.tlog.notes import Checkpoint, NoteSigner, sign_checkpoint

ENTRY_VERSION = 1


class LogEntry(NamedTuple):
    """One entry: its seq, its canonical bytes (what the tree hashes) and their parse.

    A named tuple, not a frozen dataclass: imports and `verify` make one per entry,
    and a frozen dataclass takes four times as long to build.
    """

    seq: int
    canonical: bytes
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = self.body["data"]
        return data

    @property
    def leaf_hash(self) -> bytes:
        return merkle.leaf_hash(self.canonical)

    @classmethod
    def from_canonical(cls, seq: int, canonical: bytes) -> LogEntry:
        return cls(seq=seq, canonical=canonical, body=parse_canonical(canonical))


@dataclass(frozen=True, slots=True)
class SealedAppend:
    """What a committed append produced: its entries and the checkpoint covering them."""

    entries: tuple[LogEntry, ...]
    tree_size: int
    checkpoint: str


@dataclass(frozen=True, slots=True)
class WriterMark:
    pending: int
    projected: int


ENTRY_TABLE, ENTRY_COLUMNS = "log_entries", ("seq", "kind", "subject", "canonical")
MERKLE_TABLE, NODE_COLUMNS = "merkle_nodes", ("level", "idx", "hash")
TILE_TABLE, TILE_COLUMNS = "merkle_tiles", ("level", "idx", "hashes")

Rows = list[tuple[Any, ...]]
# Rows for one table: its name, its columns, and the rows' values in that order.
TableRows = tuple[str, tuple[str, ...], Rows]


@dataclass(frozen=True, slots=True)
class LogHead:
    """What an append builds on: the committed tree (its size and frontier) and its key."""

    origin: str
    size: int
    frontier: tuple[bytes, ...]
    verifier_key: str


@dataclass(frozen=True, slots=True)
class PreparedAppend:
    """Everything an append writes, built without the database: rows for each table
    (in insertion order) and the signed checkpoint. Plain values, so it can be pickled
    to the process that writes it (see `ledger.importing`)."""

    base: LogHead
    tables: tuple[TableRows, ...]
    tree_size: int
    root: bytes
    checkpoint: str
    # Without nodes and tiles in `tables`: the tree's new nodes, level by level
    # (`merkle.Growth.levels`), from which `write_prepared` stores them.
    levels: tuple[bytes, ...] | None = None


def read_head(session: Session) -> LogHead:
    state = session.get(LedgerState, 1)
    if state is None:
        raise NotInitialized("no ledger in this database: run `consent-ledger init`")
    frontier_keys = merkle.root_node_keys(state.tree_size)
    stored = DbNodeReader(session).read_nodes(frontier_keys)
    return LogHead(
        origin=state.origin,
        size=state.tree_size,
        frontier=tuple(stored[key] for key in frontier_keys),
        verifier_key=state.verifier_key,
    )


def write_prepared(session: Session, prepared: PreparedAppend) -> None:
    """Write a prepared append in the caller's write transaction (it holds the write lock
    and has checked that the log's head is still `prepared.base`)."""
    tables = list(prepared.tables)
    if prepared.levels is not None:
        tables[1:1] = _derive_tree(session, prepared, prepared.levels)
    for table, columns, rows in tables:
        bulk_insert(session, table, columns, rows)
    session.execute(
        insert(CheckpointRow).values(
            tree_size=prepared.tree_size, root=prepared.root, note=prepared.checkpoint
        )
    )
    session.execute(
        update(LedgerState).where(col(LedgerState.id) == 1).values(tree_size=prepared.tree_size)
    )


def _derive_tree(
    session: Session, prepared: PreparedAppend, levels: Sequence[bytes]
) -> list[TableRows]:
    """The tiles and nodes of a prepared append, from its new nodes. The right edge they
    leave must give the root its checkpoint signs, which the next append builds on;
    the nodes within are not hashed again here (that would cost the writer as much
    as it cost the preparer), `verify` rebuilds them all from the entries."""
    base = prepared.base
    try:
        growth = merkle.Growth.from_levels(base.size, base.frontier, levels)
    except InvalidInput as exc:
        raise VerificationError(f"the prepared tree is malformed: {exc}") from None
    if growth.size != prepared.tree_size or growth.root != prepared.root:
        raise VerificationError(
            f"the entries prepared for tree size {prepared.tree_size} do not give the root "
            "their checkpoint signs; nothing was written"
        )
    return _tree_tables(session, growth)


def _tree_tables(session: Session, growth: merkle.Growth) -> list[TableRows]:
    tiles, nodes = growth.stored(read_node_ranges(session, growth.completed_edge()))
    return [
        (TILE_TABLE, TILE_COLUMNS, cast(Rows, tiles)),
        (MERKLE_TABLE, NODE_COLUMNS, cast(Rows, nodes)),
    ]


def read_node_ranges(
    session: Session, ranges: Sequence[merkle.NodeRange]
) -> dict[merkle.NodeKey, bytes]:
    """The nodes stored one by one in `ranges` (each of them, or VerificationError)."""
    if not ranges:
        return {}
    rows = session.execute(
        select(col(MerkleNode.level), col(MerkleNode.idx), col(MerkleNode.hash)).where(
            or_(
                *(
                    and_(
                        col(MerkleNode.level) == level,
                        col(MerkleNode.idx) >= start,
                        col(MerkleNode.idx) < end,
                    )
                    for level, start, end in ranges
                )
            )
        )
    )
    found = {(level, index): node for level, index, node in rows}
    for level, start, end in ranges:
        for index in range(start, end):
            if (level, index) not in found:
                raise VerificationError(
                    "is missing: the stored tree is incomplete (run `consent-ledger verify`)",
                    subject=f"merkle node {level}/{index}",
                )
    return found


# The log's two hooks, supplied by the caller so that the log knows nothing of what
# entries mean. A projection hook: given the entries of one append, rows to insert
# into derived tables, as (table, columns, rows).
ProjectionHook = Callable[[Sequence[LogEntry]], Sequence[TableRows]]
# A subject hook: the subject an entry (kind, data) concerns, stored beside it in
# `log_entries.subject` so that a subject's history is one indexed read.
# Required wherever a writer is made, so that a forgotten hook cannot silently store none.
SubjectOf = Callable[[str, Mapping[str, Any]], str | None]


def no_subject(kind: str, data: Mapping[str, Any]) -> str | None:
    """The subject hook of a log whose entries concern no subject."""
    return None


@dataclass
class LogWriter:
    session: Session | None
    origin: str
    actor: str
    time: str
    # The key this append must be signed with (the last one announced).
    verifier_key: str
    # The head the pending entries build on.
    _base: LogHead
    _pending: list[LogEntry] = field(default_factory=list)
    # The `log_entries` rows and the leaf hashes of `_pending`, built as each entry is
    # appended; the tree over them is built once, when they are prepared.
    _rows: list[tuple[int, str, str | None, bytes]] = field(default_factory=list)
    _leaves: list[bytes] = field(default_factory=list)
    _projected: int = 0
    _keep_nodes: bool = True
    _subject_of: SubjectOf = no_subject

    @classmethod
    def open(cls, session: Session, *, actor: str, subject_of: SubjectOf) -> LogWriter:
        """Read the committed head. The caller holds the write lock (`write_session`)."""
        # The time is taken only after the head, under the lock: entry times never go
        # backwards along seq.
        return cls.at(read_head(session), actor=actor, session=session, subject_of=subject_of)

    @classmethod
    def at(
        cls,
        head: LogHead,
        *,
        actor: str,
        session: Session | None = None,
        keep_nodes: bool = True,
        subject_of: SubjectOf,
    ) -> LogWriter:
        """A writer building on `head`. Without a session it can only `prepare`, and only
        without `keep_nodes`: whoever writes the result must check, under the write lock,
        that the head is unchanged, and derives the Merkle tiles and nodes there (an
        import's writer process)."""
        return cls(
            session=session,
            origin=head.origin,
            actor=actor,
            time=format_timestamp(utc_now()),
            verifier_key=head.verifier_key,
            _base=head,
            _keep_nodes=keep_nodes,
            _subject_of=subject_of,
        )

    def head(self) -> LogHead:
        """The head after everything appended so far: what the next append builds on."""
        if not self._leaves:
            return self._base
        return self._head_after(self._growth())

    def _growth(self) -> merkle.Growth:
        return merkle.Growth(self._base.size, self._base.frontier, b"".join(self._leaves))

    def _head_after(self, growth: merkle.Growth) -> LogHead:
        return LogHead(
            origin=self.origin,
            size=growth.size,
            frontier=growth.frontier,
            verifier_key=self.verifier_key,
        )

    @property
    def next_seq(self) -> int:
        return self._base.size + len(self._pending)

    @property
    def pending(self) -> Sequence[LogEntry]:
        return self._pending

    def append(self, kind: str, data: dict[str, Any], *, vetted: bool = False) -> LogEntry:
        """Add an entry. `vetted`: `data` was built by the ledger from validated values,
        so its canonical bytes need no safety walk (see `canonical_bytes`)."""
        seq = self._base.size + len(self._pending)
        # Plain text, also when `kind` is an enum member: canonical bytes hold only JSON types.
        kind = str(kind)
        body = {
            "v": ENTRY_VERSION,
            "seq": seq,
            "time": self.time,
            "kind": kind,
            "actor": self.actor,
            "data": data,
        }
        # A right-sized copy: orjson's result keeps its 4 KB buffer, and an append (a
        # batch of an import) holds thousands of entries until it is sealed.
        canonical = bytes(memoryview(canonical_bytes(body, vetted=vetted)))
        entry = LogEntry(seq, canonical, body)
        self._leaves.append(merkle.leaf_hash(canonical))
        self._pending.append(entry)
        self._rows.append((seq, kind, self._subject_of(kind, data), canonical))
        return entry

    def mark(self) -> WriterMark:
        """A point to roll back to if the next part of a group append fails."""
        return WriterMark(pending=len(self._pending), projected=self._projected)

    def rollback_to(self, mark: WriterMark) -> None:
        del self._pending[mark.pending :]
        del self._rows[mark.pending :]
        del self._leaves[mark.pending :]
        self._projected = mark.projected

    def project(self, project: ProjectionHook) -> None:
        """Write projection rows for the entries appended since the last call.

        Later parts of the same transaction then read them back like committed
        state (a group append registers a subject, the next part updates it).
        """
        assert self.session is not None, "a writer without a session can only prepare"
        for table, columns, rows in self._projection_tables(project):
            bulk_insert(self.session, table, columns, rows)

    def _projection_tables(self, project: ProjectionHook) -> list[TableRows]:
        tables = [table for table in project(self._pending[self._projected :]) if table[2]]
        self._projected = len(self._pending)
        return tables

    def seal(
        self, signers: Sequence[NoteSigner], project: ProjectionHook | None = None
    ) -> SealedAppend:
        """Write everything appended so far and the checkpoint that covers it."""
        assert self.session is not None, "a writer without a session can only prepare"
        entries = tuple(self._pending)
        prepared = self.prepare(signers, project)
        write_prepared(self.session, prepared)
        return SealedAppend(
            entries=entries, tree_size=prepared.tree_size, checkpoint=prepared.checkpoint
        )

    def prepare(
        self, signers: Sequence[NoteSigner], project: ProjectionHook | None = None
    ) -> PreparedAppend:
        """Everything appended so far, with its signed checkpoint, ready to be written;
        the writer starts afresh from the new head."""
        if not self._pending:
            raise InvalidInput("nothing to append")
        if str(signers[0].verifier_key) != self.verifier_key:
            raise SigningKeyError(
                f"refusing to sign with {signers[0].verifier_key}: the log's current key is "
                f"{self.verifier_key}"
            )
        base = self._base
        growth = self._growth()
        tables: list[TableRows] = [(ENTRY_TABLE, ENTRY_COLUMNS, cast(Rows, self._rows))]
        levels = None
        if not self._keep_nodes:
            levels = tuple(growth.levels)
        else:
            assert self.session is not None, "without a session, leave the nodes to the writer"
            tables += _tree_tables(self.session, growth)
        if project is not None:
            tables += self._projection_tables(project)
        note = sign_checkpoint(Checkpoint(self.origin, growth.size, growth.root), signers)
        self._pending = []
        self._rows = []
        self._leaves = []
        self._projected = 0
        self._base = self._head_after(growth)
        return PreparedAppend(
            base=base,
            tables=tuple(tables),
            tree_size=growth.size,
            root=growth.root,
            checkpoint=note,
            levels=levels,
        )


def create_log(
    session: Session,
    *,
    origin: str,
    actor: str,
    genesis: Callable[[LogWriter], None],
    signers: Sequence[NoteSigner],
    project: ProjectionHook | None = None,
    subject_of: SubjectOf,
) -> SealedAppend:
    """Start a new, empty log and append its first entries in the same transaction."""
    session.execute(
        insert(LedgerState).values(
            id=1, origin=origin, tree_size=0, verifier_key=str(signers[0].verifier_key)
        )
    )
    writer = LogWriter.open(session, actor=actor, subject_of=subject_of)
    genesis(writer)
    return writer.seal(signers, project)


class DbNodeReader:
    """`merkle.NodeReader` over the `merkle_tiles` and `merkle_nodes` tables: two
    queries per proof (the tiles holding the keys, then the keys no tile holds)."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def read_nodes(self, keys: Collection[merkle.NodeKey]) -> Mapping[merkle.NodeKey, bytes]:
        if not keys:
            return {}
        where = {key: merkle.tile_of(key) for key in keys}
        tiles = dict(
            _by_key(self._session, TILE_TABLE, "hashes", {tile for tile, _ in where.values()})
        )
        found: dict[merkle.NodeKey, bytes] = {}
        alone = []
        for key, (tile, offset) in where.items():
            hashes = tiles.get(tile)
            if hashes is None:
                alone.append(key)
            else:
                found[key] = hashes[offset : offset + merkle.HASH_SIZE]
        found.update(_by_key(self._session, MERKLE_TABLE, "hash", alone))
        return found


def _by_key(
    session: Session, table: str, value_column: str, keys: Collection[tuple[int, int]]
) -> Iterator[tuple[tuple[int, int], bytes]]:
    """The values of a (level, idx)-keyed table's rows that `keys` name, as (key, value)."""
    if not keys:
        return
    # One `level = L AND idx IN (…)` term per level: both engines turn this into
    # primary-key lookups, where a row-value IN makes SQLite scan the table. The SQL is
    # written out (every value an int): a proof is a few such reads, and building and
    # compiling the statement with SQLAlchemy cost twenty times the read itself.
    by_level: dict[int, list[str]] = {}
    for level, index in keys:
        by_level.setdefault(int(level), []).append(str(int(index)))
    terms = " OR ".join(
        f"(level = {level} AND idx IN ({', '.join(indices)}))"
        for level, indices in by_level.items()
    )
    rows = session.connection().exec_driver_sql(
        f"SELECT level, idx, {value_column} FROM {table} WHERE {terms}"
    )
    for level, index, value in rows:
        yield (level, index), bytes(value)


# --- reading -------------------------------------------------------------------------------


def tree_size(session: Session) -> int:
    state = session.get(LedgerState, 1)
    if state is None:
        raise NotInitialized("no ledger in this database: run `consent-ledger init`")
    return state.tree_size


def origin(session: Session) -> str:
    state = session.get(LedgerState, 1)
    if state is None:
        raise NotInitialized("no ledger in this database: run `consent-ledger init`")
    return state.origin


def latest_checkpoint(session: Session) -> CheckpointRow:
    row = session.scalars(
        select(CheckpointRow).order_by(col(CheckpointRow.tree_size).desc()).limit(1)
    ).first()
    if row is None:
        raise NotInitialized("no ledger in this database: run `consent-ledger init`")
    return row


def checkpoint_at(session: Session, size: int) -> CheckpointRow:
    row = session.get(CheckpointRow, size)
    if row is None:
        raise NotFound(f"no checkpoint was published at tree size {size}")
    return row


def read_entries(session: Session, start: int, limit: int) -> list[LogEntry]:
    # Clamp to the log first: also keeps absurd integers away from the driver.
    size = tree_size(session)
    if start >= size:
        return []
    limit = min(limit, size - start)
    rows = session.execute(
        select(col(LogEntryRow.seq), col(LogEntryRow.canonical))
        .where(col(LogEntryRow.seq) >= start, col(LogEntryRow.seq) < start + limit)
        .order_by(col(LogEntryRow.seq))
    )
    return [LogEntry.from_canonical(seq, canonical) for seq, canonical in rows]


def read_entry(session: Session, seq: int) -> LogEntry:
    size = tree_size(session)
    if not 0 <= seq < size:
        raise NotFound(f"no entry {seq}: the log has {size} entries")
    row = session.get(LogEntryRow, seq)
    if row is None:
        raise NotFound(f"no entry {seq}: the log has {tree_size(session)} entries")
    return LogEntry.from_canonical(row.seq, row.canonical)


def check_range(size: int, *, index: int | None = None, tree: int | None = None) -> None:
    if tree is not None and not 0 <= tree <= size:
        raise InvalidInput(f"tree size {tree} is outside 0..{size}", field="tree_size")
    if index is not None and tree is not None and not 0 <= index < tree:
        raise InvalidInput(f"index {index} is outside 0..{tree - 1}", field="index")


def inclusion_proof(session: Session, index: int, size: int) -> list[bytes]:
    check_range(tree_size(session), index=index, tree=size)
    return merkle.inclusion_proof(DbNodeReader(session), index, size)


def consistency_proof(session: Session, old_size: int, new_size: int) -> list[bytes]:
    current = tree_size(session)
    check_range(current, tree=new_size)
    if not 0 <= old_size <= new_size:
        raise InvalidInput(f"old size {old_size} is outside 0..{new_size}", field="old_size")
    return merkle.consistency_proof(DbNodeReader(session), old_size, new_size)


def root_at(session: Session, size: int) -> bytes:
    return merkle.tree_root(DbNodeReader(session), size)


def checkpoint_note_at_or_after(session: Session, size: int) -> str:
    """The first checkpoint covering `size` entries: answers about tree size `size` are
    provable against it (with a consistency proof when it is larger)."""
    note = session.scalar(
        select(col(CheckpointRow.note))
        .where(col(CheckpointRow.tree_size) >= size)
        .order_by(col(CheckpointRow.tree_size))
        .limit(1)
    )
    if note is None:
        raise NotFound(f"no checkpoint covers tree size {size}")
    return note


def set_verifier_key(session: Session, verifier_key: str) -> None:
    """Record the key that signs from the next append on (in the rotation's transaction)."""
    session.execute(
        update(LedgerState).where(col(LedgerState.id) == 1).values(verifier_key=verifier_key)
    )


def current_verifier_key(session: Session) -> str:
    state = session.get(LedgerState, 1)
    if state is None:
        raise NotInitialized("no ledger in this database: run `consent-ledger init`")
    return state.verifier_key
