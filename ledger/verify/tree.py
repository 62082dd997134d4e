"""Step 4 of verification: the stored Merkle tree is exactly the tree the entries give.

Every node of the recomputed tree is stored, in a complete C2SP tile (`merkle_tiles`)
or alone (`merkle_nodes`), with the same hash, and nothing else is stored: proofs
served from stored nodes are then sound.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from operator import itemgetter

from sqlalchemy import Connection

from ledger.errors import VerificationError
from ledger.tlog import merkle
from ledger.verify.rows import OrderedRows


def check_stored_tree(conn: Connection, tree_levels: Sequence[bytearray]) -> None:
    """Every node of the recomputed tree is stored, in a complete tile or alone (or
    both: a tile's first nodes were stored alone before it was complete), with the
    same hash; nothing else is stored."""
    levels = [level for level in tree_levels if level]
    tiles = _check_tiles(conn, levels)
    for level, hashes in enumerate(levels):
        _check_level(conn, level, hashes, tiles.get(level // merkle.TILE_HEIGHT, []))
    for level, index in conn.exec_driver_sql(
        f"SELECT level, idx FROM merkle_nodes WHERE level >= {len(levels)} OR level < 0 LIMIT 1"
    ):
        raise VerificationError(
            "is missing or extra: the stored tree does not match the entries",
            subject=f"merkle node {level}/{index}",
        )


def _check_tiles(conn: Connection, levels: list[bytearray]) -> dict[int, list[int]]:
    """Check each stored tile against the recomputed tree; the indexes of the tiles
    of each tile level, in order."""
    found: dict[int, list[int]] = {}
    with OrderedRows(
        conn, "SELECT level, idx, hashes FROM merkle_tiles ORDER BY level, idx"
    ) as rows:
        for batch in rows.batches():
            for tile_level, index, stored in batch:
                where = f"merkle tile {tile_level}/{index}"
                expected = _tile(levels, tile_level, index)
                if expected is None:
                    raise VerificationError(
                        "is extra: the entries do not complete this tile", subject=where
                    )
                if stored != expected:
                    span = 1 << (merkle.TILE_HEIGHT * (tile_level + 1))
                    raise VerificationError(
                        "does not match the entries it covers: entry bytes or tree nodes "
                        f"were changed in entries {index * span}..{(index + 1) * span - 1}",
                        subject=where,
                    )
                found.setdefault(tile_level, []).append(index)
    return found


def _check_level(conn: Connection, level: int, hashes: bytearray, tiles: list[int]) -> None:
    """The nodes of `level` stored alone match, and with those in `tiles` are all of them."""
    size = merkle.HASH_SIZE
    count = len(hashes) // size
    width = merkle.TILE_WIDTH >> (level % merkle.TILE_HEIGHT)
    view = memoryview(hashes)
    alone = 0
    with OrderedRows(
        conn, f"SELECT idx, hash FROM merkle_nodes WHERE level = {level} ORDER BY idx"
    ) as rows:
        for batch in rows.batches():
            first, last = batch[0][0], batch[-1][0]
            stored = list(map(itemgetter(1), batch))
            # (level, idx) is the primary key: a run of consecutive indexes in
            # range can be compared in one go.
            if (
                0 <= first
                and last < count
                and last - first + 1 == len(batch)
                and set(map(len, stored)) == {size}
                and b"".join(stored) == view[first * size : (last + 1) * size]
            ):
                alone += len(batch) - _in_tiles(tiles, width, first, last + 1)
                continue
            for index, node in batch:
                where = f"merkle node {level}/{index}"
                if not 0 <= index < count:
                    raise VerificationError(
                        "is missing or extra: the stored tree does not match the entries",
                        subject=where,
                    )
                if node != hashes[index * size : (index + 1) * size]:
                    first_entry, last_entry = index << level, ((index + 1) << level) - 1
                    raise VerificationError(
                        "does not match the entries it covers: entry bytes or tree nodes "
                        f"were changed in entries {first_entry}..{last_entry}",
                        subject=where,
                    )
                alone += _in_tiles(tiles, width, index, index + 1) == 0
    if alone != count - len(tiles) * width:
        missing = _first_missing(conn, level, count, width, tiles)
        raise VerificationError("is missing", subject=f"merkle node {level}/{missing}")


def _first_missing(conn: Connection, level: int, count: int, width: int, tiles: list[int]) -> int:
    in_tiles = set(tiles)
    expected = (index for index in range(count) if index // width not in in_tiles)
    with OrderedRows(
        conn, f"SELECT idx FROM merkle_nodes WHERE level = {level} ORDER BY idx"
    ) as rows:
        want = next(expected, None)
        for batch in rows.batches():
            for (index,) in batch:
                if want is not None and index > want:
                    return want
                if index == want:
                    want = next(expected, None)
    assert want is not None, "called with a node missing"
    return want


def _tile(levels: Sequence[bytes | bytearray], tile_level: int, index: int) -> bytes | None:
    """Tile (tile_level, index) of a tree given level by level, or None if incomplete."""
    top = tile_level * merkle.TILE_HEIGHT + merkle.TILE_HEIGHT - 1
    if index < 0 or top >= len(levels) or len(levels[top]) < (index + 1) * 2 * merkle.HASH_SIZE:
        return None
    parts = []
    for sub in range(merkle.TILE_HEIGHT):
        span = (merkle.TILE_WIDTH >> sub) * merkle.HASH_SIZE
        level = levels[tile_level * merkle.TILE_HEIGHT + sub]
        parts.append(level[index * span : (index + 1) * span])
    return b"".join(parts)


def _in_tiles(tiles: list[int], width: int, start: int, stop: int) -> int:
    """How many of a level's nodes start … stop-1 lie in `tiles` (sorted indexes)."""
    inside = 0
    first, last = bisect_left(tiles, start // width), bisect_right(tiles, (stop - 1) // width)
    for tile in tiles[first:last]:
        inside += min(stop, (tile + 1) * width) - max(start, tile * width)
    return inside
