"""The tree as stored, in complete tiles and lone nodes: proofs, roots and C2SP tiles read
back from the database match a tree rebuilt from the entries, on both engines."""

from __future__ import annotations

import random

import pytest

from ledger.service import ConsentLedger
from ledger.store.db import read_session, write_session
from ledger.store.schema import MerkleTile
from ledger.tlog import log, merkle
from ledger.tlog.log import LogWriter, no_subject
from ledger.tlog.tiles import TileAddress, read_tile

# Appends of these sizes cross level-0 tiles one leaf at a time and in bulk, and
# complete the first tile of level 1 (65,536 leaves) in the middle of an append.
APPENDS = [300, 1, 1, 40_000, 25_500, 7]


@pytest.fixture
def big_ledger(ledger: ConsentLedger) -> ConsentLedger:
    signer = ledger.signing_key()
    for count in APPENDS:
        with write_session(ledger.engine) as session:
            writer = LogWriter.open(session, actor="ops", subject_of=no_subject)
            for number in range(count):
                writer.append("test.note", {"n": number})
            writer.seal([signer])
    return ledger


def rebuilt(ledger: ConsentLedger) -> merkle.MemoryTree:
    tree = merkle.MemoryTree()
    with read_session(ledger.engine) as session:
        for entry in log.read_entries(session, 0, log.tree_size(session)):
            tree.append(entry.leaf_hash)
    return tree


def test_proofs_and_roots_match_the_entries(big_ledger: ConsentLedger) -> None:
    tree = rebuilt(big_ledger)
    size = tree.size
    assert size > 1 << 16
    rng = random.Random(7)
    sizes = [1, 255, 256, 257, 65_535, 65_536, 65_537, size, *rng.sample(range(1, size), 20)]
    with read_session(big_ledger.engine) as session:
        tiles = session.query(MerkleTile).count()
        assert tiles >= 256, "bulk appends store their nodes in tiles"
        for tree_size in sizes:
            assert log.root_at(session, tree_size) == merkle.tree_root(tree, tree_size)
            index = rng.randrange(tree_size)
            assert log.inclusion_proof(session, index, tree_size) == merkle.inclusion_proof(
                tree, index, tree_size
            )
            old = rng.randrange(tree_size + 1)
            assert log.consistency_proof(session, old, tree_size) == merkle.consistency_proof(
                tree, old, tree_size
            )


def test_c2sp_tiles_match_the_entries(big_ledger: ConsentLedger) -> None:
    tree = rebuilt(big_ledger)
    size = tree.size

    def hashes(level: int, start: int, count: int) -> bytes:
        keys = [(level, index) for index in range(start, start + count)]
        found = tree.read_nodes(keys)
        return b"".join(found[key] for key in keys)

    with read_session(big_ledger.engine) as session:
        for level, index, width in [
            (0, 0, 256),
            (0, 0, 17),  # a partial tile of a complete one: its prefix
            (0, 200, 256),
            (0, (size >> 8) - 1, 256),  # the last complete one
            (0, size >> 8, size % 256),  # the partial tile at the right edge
            (1, 0, 256),
            (1, 1, (size >> 16) and (size >> 8) - 256),  # level 1's partial tile
        ]:
            if width == 0:
                continue
            address = TileAddress(level=level, index=index, width=width)
            expected = hashes(8 * level, 256 * index, width)
            assert read_tile(session, address) == expected, (level, index, width)
