"""C2SP tlog-tiles: the log served as immutable, cacheable tiles.

A tile at level L and index N holds the hashes of Merkle level 8·L, indices
256·N … 256·N+W−1 — the first hashes of the store's own tile (L, N) once that is
complete, else rows of `merkle_nodes` — and an entry bundle holds
the canonical bytes of entries 256·N … 256·N+W−1, each prefixed with its
length as a big-endian uint16.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from ledger.errors import InvalidInput, NotFound
from ledger.store.schema import LogEntryRow, MerkleNode, MerkleTile
from ledger.tlog import log
from ledger.tlog.merkle import HASH_SIZE, TILE_HEIGHT, TILE_WIDTH

_SEGMENT = re.compile(r"^x\d{3}$")
_LAST = re.compile(r"^\d{3}$")


@dataclass(frozen=True, slots=True)
class TileAddress:
    level: int | None  # None: an entry bundle
    index: int
    width: int

    @property
    def partial(self) -> bool:
        return self.width < TILE_WIDTH


def parse_tile_path(path: str) -> TileAddress:
    """Parse `<L>/<N>[.p/<W>]` or `entries/<N>[.p/<W>]` (the part after `tile/`)."""
    parts = path.split("/")
    if len(parts) < 2:
        raise InvalidInput("expected <L>/<N> or entries/<N>", field="path")
    head, rest = parts[0], parts[1:]
    if head == "entries":
        level: int | None = None
    elif head.isdigit() and len(head) <= 2 and int(head) <= 63 // TILE_HEIGHT:
        level = int(head)
    else:
        raise InvalidInput(f"bad tile level {head!r}", field="path")
    width = TILE_WIDTH
    if len(rest) >= 2 and rest[-2].endswith(".p"):
        width_text = rest[-1]
        if not width_text.isdigit() or width_text.startswith("0") or len(width_text) > 3:
            raise InvalidInput(f"bad partial tile width {width_text!r}", field="path")
        width = int(width_text)
        if not 1 <= width < TILE_WIDTH:
            raise InvalidInput(f"partial tile width must be 1..255, got {width}", field="path")
        rest = [*rest[:-2], rest[-2][: -len(".p")]]
    if not rest or not _LAST.match(rest[-1]) or not all(_SEGMENT.match(s) for s in rest[:-1]):
        raise InvalidInput("bad tile index: expected x001/x234/067 style", field="path")
    index = int("".join(segment.lstrip("x") for segment in rest))
    return TileAddress(level=level, index=index, width=width)


def read_tile(session: Session, address: TileAddress) -> bytes:
    """The tile's bytes, or NotFound if the tree does not (yet) hold all of it."""
    first = address.index * TILE_WIDTH
    # Nodes at level 8·L exist for the first size >> 8·L positions.
    level_width = log.tree_size(session) >> (TILE_HEIGHT * (address.level or 0))
    if first + address.width > level_width:
        raise NotFound("the tree does not hold this tile yet")
    if address.level is None:
        rows = session.execute(
            select(col(LogEntryRow.canonical))
            .where(col(LogEntryRow.seq) >= first, col(LogEntryRow.seq) < first + address.width)
            .order_by(col(LogEntryRow.seq))
        ).scalars()
        bundle = bytearray()
        for canonical in rows:
            bundle += struct.pack(">H", len(canonical)) + canonical
        return bytes(bundle)
    # A complete tile of the store holds this one's hashes first (a partial tile is
    # their prefix); the nodes of tiles not yet complete are stored one by one.
    stored = session.get(MerkleTile, (address.level, address.index))
    if stored is not None:
        return stored.hashes[: address.width * HASH_SIZE]
    rows = session.execute(
        select(col(MerkleNode.hash))
        .where(
            col(MerkleNode.level) == address.level * TILE_HEIGHT,
            col(MerkleNode.idx) >= first,
            col(MerkleNode.idx) < first + address.width,
        )
        .order_by(col(MerkleNode.idx))
    ).scalars()
    hashes = list(rows)
    if len(hashes) != address.width:
        raise NotFound("the tree does not hold this tile yet")
    return b"".join(hashes)
