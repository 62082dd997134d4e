"""A build's members: stored in record-id order with their leaf hashes, proved, purged.

Members live outside the log (record ids are the platform's, and a member names its
subject by ref only). Their leaf hashes are stored 256 to a row with the root over
them (`dataset_leaves`, append-only): `members_root` is the RFC 9162 root over those
chunk roots (256 is a power of two, so RFC 9162's splits fall on chunk boundaries),
a member's proof is a path inside its chunk and one above it, and a purge deletes
the member's row but never its leaf.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select, text, update
from sqlalchemy.orm import Session
from sqlmodel import col

from ledger.consent.datasets import member_leaf, purged_leaf, record_order, split_categories
from ledger.errors import InvalidInput, NotFound
from ledger.store.db import SQLITE_CACHE_KIB, bulk_insert, in_chunks
from ledger.store.schema import DatasetLeaves, DatasetMember, DatasetObligation, SubjectVersion
from ledger.tlog.merkle import (
    HASH_SIZE,
    Growth,
    MemoryTree,
    TreeBuilder,
    inclusion_proof,
)

CHUNK_LEAVES = 256
_MEMBER_COLUMNS = ("build", "record_id", "position", "ref", "category")
_FLUSH = 10_000
# How many offending record ids an error names before it just counts the rest.
NAMED = 20


class MemberWriter:
    """Stores one build's members, given in record-id byte order, and computes its root."""

    def __init__(self, session: Session, build: int, purpose: str) -> None:
        self._session = session
        if session.get_bind().dialect.name == "sqlite":
            # The `ref` index takes members in no order: with SQLite's default 2 MB cache
            # its pages spill and are read and written again many times over.
            session.execute(text(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}"))
        self._build = build
        self._purpose = purpose
        self._rows: list[tuple[int, str, int, str, str]] = []
        self._leaves: list[bytes] = []
        self._chunk_roots = TreeBuilder()
        self._chunks: list[tuple[int, int, bytes, bytes]] = []
        self.records = 0
        self._last: bytes | None = None

    def add(self, record_id: str, ref: str, categories: str) -> None:
        """Add the next member (`categories` as stored: sorted, joined by `|`)."""
        order = record_order(record_id)
        if self._last is not None and order <= self._last:
            raise InvalidInput(
                f"record ids must arrive in byte order, each once: {record_id!r}",
                field="record_id",
            )
        self._last = order
        self._rows.append((self._build, record_id, self.records, ref, categories))
        self._leaves.append(
            member_leaf(record_id, ref, split_categories(categories), self._purpose)
        )
        self.records += 1
        if len(self._leaves) == CHUNK_LEAVES:
            self._close_chunk()
        if len(self._rows) >= _FLUSH:
            self._flush()

    def _close_chunk(self) -> None:
        packed = b"".join(self._leaves)
        root = Growth(0, (), packed).root
        self._chunk_roots.append(root)
        self._chunks.append((self._build, (self.records - 1) // CHUNK_LEAVES, packed, root))
        self._leaves = []

    def _flush(self) -> None:
        bulk_insert(self._session, "dataset_members", _MEMBER_COLUMNS, self._rows)
        bulk_insert(
            self._session, "dataset_leaves", ("build", "chunk", "hashes", "root"), self._chunks
        )
        self._rows = []
        self._chunks = []

    def finish(self) -> bytes:
        """Store what is left; the members' root (the empty root for no members)."""
        if self._leaves:
            self._close_chunk()
        self._flush()
        return self._chunk_roots.root()


def chunk_roots(session: Session, build: int) -> list[bytes]:
    return [
        bytes(root)
        for (root,) in session.execute(
            select(col(DatasetLeaves.root))
            .where(col(DatasetLeaves.build) == build)
            .order_by(col(DatasetLeaves.chunk))
        )
    ]


def chunk_leaves(session: Session, build: int, chunk: int) -> list[bytes]:
    packed = session.scalar(
        select(col(DatasetLeaves.hashes)).where(
            col(DatasetLeaves.build) == build, col(DatasetLeaves.chunk) == chunk
        )
    )
    if packed is None:
        raise NotFound(f"the leaves of build {build} chunk {chunk} are missing")
    data = bytes(packed)
    return [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


def _tree(hashes: Sequence[bytes]) -> MemoryTree:
    tree = MemoryTree()
    for value in hashes:
        tree.append(value)
    return tree


def member_proof(session: Session, build: int, position: int, records: int) -> list[bytes]:
    """The RFC 9162 inclusion proof of the member at `position` in a build of `records`."""
    chunk, offset = divmod(position, CHUNK_LEAVES)
    leaves = chunk_leaves(session, build, chunk)
    roots = chunk_roots(session, build)
    inside = inclusion_proof(_tree(leaves), offset, len(leaves)) if len(leaves) > 1 else []
    above = inclusion_proof(_tree(roots), chunk, len(roots)) if len(roots) > 1 else []
    del records
    return [*inside, *above]


def stored_leaf(session: Session, build: int, position: int) -> bytes:
    chunk, offset = divmod(position, CHUNK_LEAVES)
    leaves = chunk_leaves(session, build, chunk)
    if offset >= len(leaves):
        raise NotFound(f"build {build} has no leaf {position}")
    return leaves[offset]


def find_members(
    session: Session, build: int, record_ids: Sequence[str]
) -> dict[str, DatasetMember]:
    found: dict[str, DatasetMember] = {}
    for chunk in in_chunks(list(record_ids)):
        for member in session.scalars(
            select(DatasetMember).where(
                col(DatasetMember.build) == build, col(DatasetMember.record_id).in_(chunk)
            )
        ):
            found[member.record_id] = member
    return found


def named(values: Sequence[str]) -> str:
    shown = ", ".join(repr(value) for value in values[:NAMED])
    more = len(values) - NAMED
    return shown + (f" and {more} more" if more > 0 else "")


def purge_members(
    session: Session, build: int, label: str, record_ids: Sequence[str], seq: int, time: str
) -> tuple[int, int, bytes]:
    """Delete these members (keeping their leaves) and fulfil their open obligations.

    Returns (records, obligations fulfilled, purged_root).
    Every id must be a member still: otherwise nothing is purged and the error names them.
    """
    unique = sorted(set(record_ids), key=record_order)
    if len(unique) != len(record_ids):
        seen: set[str] = set()
        twice = [r for r in record_ids if r in seen or seen.add(r)]  # type: ignore[func-returns-value]
        raise InvalidInput(
            f"listed more than once: {named(sorted(set(twice)))}", field="record_ids"
        )
    members = find_members(session, build, unique)
    missing = [record_id for record_id in unique if record_id not in members]
    if missing:
        raise InvalidInput(
            f"{len(missing)} record id(s) are not members of {label} (or were purged "
            f"already): {named(missing)}",
            field="record_ids",
        )
    fulfils, _ = _close(session, list(members.values()), "fulfilled", seq, time)
    for chunk in in_chunks(unique):
        session.execute(
            delete(DatasetMember).where(
                col(DatasetMember.build) == build, col(DatasetMember.record_id).in_(chunk)
            )
        )
    tree = TreeBuilder()
    for record_id in unique:
        tree.append(purged_leaf(record_id))
    return len(unique), fulfils, tree.root()


def retire_members(session: Session, build: int, seq: int, time: str) -> int:
    """Delete every member of a build (keeping the leaves); its open obligations are
    fulfilled by the retirement. Returns how many were. In SQL: a build may hold
    millions of members."""
    fulfilled = session.execute(
        update(DatasetObligation)
        .where(col(DatasetObligation.build) == build, col(DatasetObligation.status) == "open")
        .values(status="fulfilled", closed_seq=seq, closed_time=time)
    ).rowcount  # type: ignore[attr-defined]
    erased_records = (
        select(col(DatasetMember.record_id))
        .join(SubjectVersion, col(SubjectVersion.ref) == col(DatasetMember.ref))
        .where(col(DatasetMember.build) == build, col(SubjectVersion.erased))
    )
    session.execute(
        update(DatasetObligation)
        .where(
            col(DatasetObligation.build) == build,
            col(DatasetObligation.closed_seq) == seq,
            col(DatasetObligation.record_id).in_(erased_records),
        )
        .values(record_id=None)
    )
    session.execute(delete(DatasetMember).where(col(DatasetMember.build) == build))
    return int(fulfilled)


def _close(
    session: Session, members: Sequence[DatasetMember], status: str, seq: int, time: str
) -> tuple[int, int]:
    """Close the open obligations of these members. An erased subject's records keep
    no record id once purged (SPEC §7.2). Returns (closed, of them an erased subject's)."""
    ids = [m.obligation for m in members if m.obligation is not None]
    refs = sorted({m.ref for m in members})
    erased_refs: set[str] = set()
    for chunk in in_chunks(refs):
        erased_refs.update(
            session.scalars(
                select(col(SubjectVersion.ref)).where(
                    col(SubjectVersion.ref).in_(chunk), col(SubjectVersion.erased)
                )
            )
        )
    forget = [m.obligation for m in members if m.obligation is not None and m.ref in erased_refs]
    for ids_chunk in in_chunks(ids):
        session.execute(
            update(DatasetObligation)
            .where(col(DatasetObligation.id).in_(ids_chunk))
            .values(status=status, closed_seq=seq, closed_time=time)
        )
    for forget_chunk in in_chunks(forget):
        session.execute(
            update(DatasetObligation)
            .where(col(DatasetObligation.id).in_(forget_chunk))
            .values(record_id=None)
        )
    return len(ids), len(forget)
