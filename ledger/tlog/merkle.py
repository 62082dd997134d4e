"""The log's Merkle tree: RFC 9162 §2.1 (identical to RFC 6962 §2.1).

Proofs are built from stored node hashes, never by rehashing leaves. The store
holds the hash of every *perfect aligned subtree*: key ``(level, index)`` is the
hash of leaves ``[index * 2**level, (index + 1) * 2**level)``, level 0 being
the leaf hashes. Those nodes never change once written, so one store serves
proofs for every past tree size, and it is exactly what C2SP tlog-tiles serves.

Every subtree an RFC proof needs is either one stored node or the right edge
of the tree, which splits into at most log2(n) stored perfect subtrees; a proof
therefore costs one `NodeReader.read_nodes` call for O(log n) keys and O(log n)
hashing.

Throughout, a *leaf* is a leaf hash (`leaf_hash` of the entry bytes), because
that is what the tree stores and what RFC 9162 verifiers take.

Verification follows RFC 9162 §2.1.3.2 and §2.1.4.2 and raises
`VerificationError` on failure, returning None on success.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from typing import Protocol, TypeAlias

from ledger.errors import InvalidInput, NotFound, VerificationError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Growth",
    "MemoryTree",
    "NodeKey",
    "NodeReader",
    "TILE_HASHES",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "TileKey",
    "TreeBuilder",
    "consistency_proof",
    "consistency_proof_keys",
    "complete_tiles",
    "fold_root",
    "inclusion_proof",
    "inclusion_proof_keys",
    "leaf_hash",
    "node_hash",
    "pair_hashes",
    "range_node_keys",
    "range_proof",
    "range_proof_keys",
    "root_node_keys",
    "tile_of",
    "tree_root",
    "verify_consistency",
    "verify_inclusion",
    "verify_range",
]

HASH_SIZE = 32
EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()

NodeKey: TypeAlias = tuple[int, int]
"""``(level, index)`` of a perfect aligned subtree."""

# Bound once: these run for every append, and attribute lookups add up.
_sha256 = hashlib.sha256
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

# A range of leaves [start, end) whose MTH a proof needs.
_Range: TypeAlias = tuple[int, int]


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 || data)."""
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: SHA-256(0x01 || left || right)."""
    return _sha256(_NODE_PREFIX + left + right).digest()


class NodeReader(Protocol):
    """Anything that can look up stored perfect-subtree hashes."""

    def read_nodes(self, keys: Collection[NodeKey]) -> Mapping[NodeKey, bytes]:
        """Return the hash of every requested key that exists.

        Callers ask for every key a proof needs in one call, so that a database
        or tile backend can answer with a single round trip. A key missing
        from the result is reported by the caller as `NotFound`.
        """
        ...


def _check_size(name: str, value: int) -> None:
    if value < 0:
        raise InvalidInput(f"{name} must not be negative, got {value}", field=name)


def _range_keys(start: int, end: int) -> list[NodeKey]:
    # Proof ranges always start at a multiple of a power of two at least as
    # large as their own largest power-of-two part, so greedily taking the
    # biggest piece first yields aligned subtrees, in RFC split order.
    keys: list[NodeKey] = []
    width = end - start
    while width:
        level = width.bit_length() - 1
        keys.append((level, start >> level))
        start += 1 << level
        width -= 1 << level
    return keys


def root_node_keys(size: int) -> list[NodeKey]:
    """Perfect aligned subtrees decomposing leaves [0, size), left to right."""
    _check_size("size", size)
    return _range_keys(0, size)


def fold_root(hashes: Sequence[bytes]) -> bytes:
    """Combine perfect subtree hashes (left to right) into the MTH of their union.

    RFC 9162 splits at the largest power of two, so the leftmost subtree is the
    left child of the root and the rest nest to the right: fold from the right.
    """
    if not hashes:
        return EMPTY_ROOT
    sha256 = _sha256
    acc = hashes[-1]
    for i in range(len(hashes) - 2, -1, -1):
        acc = sha256(_NODE_PREFIX + hashes[i] + acc).digest()
    return acc


def _inclusion_ranges(index: int, size: int) -> list[_Range]:
    # PATH(m, D[n]) from RFC 9162 §2.1.3.1, unrolled: walk down from the root,
    # recording the sibling of the side holding `index`; the RFC emits them
    # bottom-up, hence the reversal.
    _check_size("index", index)
    _check_size("size", size)
    if index >= size:
        raise InvalidInput(f"leaf index {index} is outside a tree of size {size}", field="index")
    siblings: list[_Range] = []
    start, end = 0, size
    while end - start > 1:
        k = 1 << ((end - start - 1).bit_length() - 1)
        if index < start + k:
            siblings.append((start + k, end))
            end = start + k
        else:
            siblings.append((start, start + k))
            start += k
    siblings.reverse()
    return siblings


def _consistency_ranges(old_size: int, new_size: int) -> list[_Range]:
    # SUBPROOF(m, D[n], true) from RFC 9162 §2.1.4.1, unrolled the same way.
    _check_size("old_size", old_size)
    _check_size("new_size", new_size)
    if old_size > new_size:
        raise InvalidInput(
            f"old size {old_size} is larger than new size {new_size}", field="old_size"
        )
    if old_size == 0 or old_size == new_size:
        return []
    siblings: list[_Range] = []
    start, end = 0, new_size
    # b stays true while the old tree is a prefix of the current range; the
    # RFC omits MTH(D[0:m]) then, since the verifier already has the old root.
    whole_old_tree = True
    while old_size != end:
        k = 1 << ((end - start - 1).bit_length() - 1)
        if old_size - start <= k:
            siblings.append((start + k, end))
            end = start + k
        else:
            siblings.append((start, start + k))
            start += k
            whole_old_tree = False
    siblings.reverse()
    if not whole_old_tree:
        siblings.insert(0, (start, end))
    return siblings


def _keys_for(ranges: list[_Range]) -> tuple[list[list[NodeKey]], list[NodeKey]]:
    per_range = [_range_keys(start, end) for start, end in ranges]
    # Proof ranges are disjoint, but deduplicating keeps the contract explicit
    # for readers that would choke on repeated keys.
    unique = list(dict.fromkeys(key for keys in per_range for key in keys))
    return per_range, unique


def _read(reader: NodeReader, keys: list[NodeKey]) -> Mapping[NodeKey, bytes]:
    if not keys:
        return {}
    found = reader.read_nodes(keys)
    if len(found) < len(keys) or any(key not in found for key in keys):
        missing = [key for key in keys if key not in found]
        raise NotFound(
            f"{len(missing)} tree node(s) not stored, first (level, index) = {missing[0]}"
        )
    return found


def _hashes_for(reader: NodeReader, ranges: list[_Range]) -> list[bytes]:
    per_range, unique = _keys_for(ranges)
    found = _read(reader, unique)
    return [fold_root([found[key] for key in keys]) for keys in per_range]


def inclusion_proof_keys(index: int, size: int) -> list[NodeKey]:
    """Every stored node an inclusion proof for leaf `index` at `size` needs."""
    if size == 0:
        raise InvalidInput("there is no inclusion proof in an empty tree", field="size")
    return _keys_for(_inclusion_ranges(index, size))[1]


def inclusion_proof(reader: NodeReader, index: int, size: int) -> list[bytes]:
    """RFC 9162 §2.1.3.1 inclusion proof (audit path) for leaf `index` at `size`."""
    if size == 0:
        raise InvalidInput("there is no inclusion proof in an empty tree", field="size")
    return _hashes_for(reader, _inclusion_ranges(index, size))


def consistency_proof_keys(old_size: int, new_size: int) -> list[NodeKey]:
    """Every stored node a consistency proof from `old_size` to `new_size` needs."""
    return _keys_for(_consistency_ranges(old_size, new_size))[1]


def consistency_proof(reader: NodeReader, old_size: int, new_size: int) -> list[bytes]:
    """RFC 9162 §2.1.4.1 consistency proof; empty if old_size is 0 or new_size."""
    return _hashes_for(reader, _consistency_ranges(old_size, new_size))


def tree_root(reader: NodeReader, size: int) -> bytes:
    """MTH of the first `size` leaves, from at most log2(size) + 1 stored nodes."""
    keys = root_node_keys(size)
    found = _read(reader, keys)
    return fold_root([found[key] for key in keys])


def range_node_keys(start: int, end: int) -> list[NodeKey]:
    """Aligned perfect subtrees covering leaves [start, end), left to right.

    Each piece is the largest subtree that starts at the current position (aligned
    to its own size) and fits before `end`: the compact range of [start, end).
    """
    _check_size("start", start)
    if end < start:
        raise InvalidInput(f"range end {end} is before its start {start}", field="end")
    keys: list[NodeKey] = []
    while start < end:
        level = (end - start).bit_length() - 1
        if start:
            # No piece may cross a boundary of its own size.
            level = min(level, (start & -start).bit_length() - 1)
        keys.append((level, start >> level))
        start += 1 << level
    return keys


def range_proof_keys(start: int, end: int, size: int) -> list[NodeKey]:
    """The nodes a range proof for leaves [start, end) at `size` holds, in order: the
    subtrees left of `start`, then those covering [end, size)."""
    if not 0 <= start < end <= size:
        raise InvalidInput(
            f"leaves {start}..{end - 1} are not a non-empty range of a tree of size {size}",
            field="range",
        )
    return root_node_keys(start) + range_node_keys(end, size)


def range_proof(reader: NodeReader, start: int, end: int, size: int) -> list[bytes]:
    """Proof that leaves [start, end) are in the tree of `size`: with the leaves, it gives
    the root (`verify_range`). One proof for a whole run of leaves, O(log size) hashes,
    where inclusion proofs would be one per leaf."""
    keys = range_proof_keys(start, end, size)
    found = _read(reader, keys)
    return [found[key] for key in keys]


def verify_range(
    start: int, leaves: Sequence[bytes], size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that `leaves` (leaf hashes) are leaves start, start+1, … of the tree of `size`
    with `root`, given `range_proof(start, start + len(leaves), size)`.

    The subtrees left of the range, the leaves and the subtrees right of it are pushed
    in order onto a stack that merges siblings, which leaves the tree's own root
    decomposition; folded, it must give `root`. Raises `VerificationError`.
    """
    end = start + len(leaves)
    if start < 0 or not leaves or end > size:
        raise VerificationError(
            f"{len(leaves)} leaves from {start} are not a non-empty range of a tree of size {size}"
        )
    _check_hash("root", root)
    left = root_node_keys(start)
    right = range_node_keys(end, size)
    if len(proof) != len(left) + len(right):
        raise VerificationError(
            f"a range proof for leaves {start}..{end - 1} at size {size} has "
            f"{len(left) + len(right)} hashes, got {len(proof)}"
        )
    for position, value in enumerate(proof):
        _check_hash(f"proof[{position}]", value)
    for position, value in enumerate(leaves):
        _check_hash(f"leaf {start + position}", value)
    sha256 = _sha256
    stack: list[tuple[int, int, bytes]] = []
    pieces = [(*key, value) for key, value in zip(left, proof[: len(left)], strict=True)]
    pieces += [(0, start + i, leaf) for i, leaf in enumerate(leaves)]
    pieces += [(*key, value) for key, value in zip(right, proof[len(left) :], strict=True)]
    for level, index, value in pieces:
        # A right child merges with its left sibling on top of the stack, and climbs.
        while index & 1 and stack and stack[-1][0] == level and stack[-1][1] == index - 1:
            value = sha256(_NODE_PREFIX + stack.pop()[2] + value).digest()
            level, index = level + 1, index >> 1
        stack.append((level, index, value))
    if fold_root([value for _, _, value in stack]) != root:
        raise VerificationError(
            f"leaves {start}..{end - 1} and their range proof do not lead to the root of "
            f"tree size {size}"
        )


def _check_hash(what: str, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise VerificationError(f"{what} is not a {HASH_SIZE}-byte hash")


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that leaf hash `leaf` is leaf `index` of the tree of `size` with `root`.

    RFC 9162 §2.1.3.2. Any failure, including an impossible index or size,
    raises `VerificationError`: these values come with the proof being checked.
    """
    if index < 0 or size < 0 or index >= size:
        raise VerificationError(f"leaf index {index} is outside a tree of size {size}")
    _check_hash("leaf", leaf)
    _check_hash("root", root)
    fn, sn = index, size - 1
    r = leaf
    for position, p in enumerate(proof):
        _check_hash(f"proof[{position}]", p)
        if sn == 0:
            raise VerificationError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = _sha256(_NODE_PREFIX + p + r).digest()
            if not fn & 1:
                # Right-edge nodes with no sibling are promoted unchanged, so
                # skip the levels where this node is a lone left child.
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _sha256(_NODE_PREFIX + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("inclusion proof is shorter than the tree is deep")
    if r != root:
        raise VerificationError("inclusion proof does not lead to the expected root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree (`new_size`, `new_root`) extends (`old_size`, `old_root`).

    RFC 9162 §2.1.4.2, plus the trivial cases the RFC leaves to callers: from
    size 0 any tree is consistent given an empty proof, and equal sizes need
    equal roots and an empty proof. Raises `VerificationError` on failure.
    """
    if old_size < 0 or new_size < 0 or old_size > new_size:
        raise VerificationError(f"sizes {old_size} -> {new_size} cannot be consistent")
    _check_hash("old root", old_root)
    _check_hash("new root", new_root)
    if old_size == 0:
        if proof:
            raise VerificationError("consistency proof from an empty tree must be empty")
        return
    if old_size == new_size:
        if proof:
            raise VerificationError("consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise VerificationError("roots differ for the same tree size")
        return
    if not proof:
        raise VerificationError("consistency proof is empty")
    for position, c in enumerate(proof):
        _check_hash(f"proof[{position}]", c)

    path: Sequence[bytes] = proof
    if old_size & (old_size - 1) == 0:
        # The old tree is then a node of the new one and the RFC leaves its
        # hash out of the proof; the verifier supplies it.
        path = [old_root, *proof]
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise VerificationError("consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr = _sha256(_NODE_PREFIX + c + fr).digest()
            sr = _sha256(_NODE_PREFIX + c + sr).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = _sha256(_NODE_PREFIX + sr + c).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("consistency proof is shorter than the tree is deep")
    if fr != old_root:
        raise VerificationError("consistency proof does not lead to the old root")
    if sr != new_root:
        raise VerificationError("consistency proof does not lead to the new root")


class TreeBuilder:
    """Incremental appender holding the right frontier (at most log2(n)+1 perfect subtrees).

    The frontier is all a log needs in memory to keep appending and to know its
    root; everything else lives in the node store, fed by what `append` returns.
    """

    __slots__ = ("_frontier", "_size")

    def __init__(self, size: int = 0, frontier: Sequence[bytes] = ()) -> None:
        """Resume at `size` leaves; `frontier` = hashes of `root_node_keys(size)`, in order."""
        _check_size("size", size)
        if len(frontier) != size.bit_count():
            raise InvalidInput(
                f"a tree of size {size} has {size.bit_count()} frontier hashes, "
                f"got {len(frontier)}",
                field="frontier",
            )
        for position, value in enumerate(frontier):
            if not isinstance(value, bytes) or len(value) != HASH_SIZE:
                raise InvalidInput(f"not a {HASH_SIZE}-byte hash", field=f"frontier[{position}]")
        self._size = size
        self._frontier = list(frontier)

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Append leaf hash `leaf`; return the new stored nodes as (level, index, hash).

        That is the leaf itself at level 0 plus every perfect subtree it
        completes, bottom-up: one node hash per leaf on average.
        """
        if len(leaf) != HASH_SIZE:
            raise InvalidInput(f"a leaf hash is {HASH_SIZE} bytes, got {len(leaf)}", field="leaf")
        size = self._size
        frontier = self._frontier
        index = size
        new_nodes = [(0, index, leaf)]
        acc = leaf
        level = 0
        # Each trailing 1 bit of the old size is a perfect subtree on the
        # frontier of exactly the current height: merge with it and climb.
        while size & 1:
            acc = _sha256(_NODE_PREFIX + frontier.pop() + acc).digest()
            size >>= 1
            index >>= 1
            level += 1
            new_nodes.append((level, index, acc))
        frontier.append(acc)
        self._size += 1
        return new_nodes

    def root(self) -> bytes:
        """Current MTH (EMPTY_ROOT when empty)."""
        return fold_root(self._frontier)

    def frontier(self) -> list[bytes]:
        """Hashes of `root_node_keys(size)`, in order: what `__init__` resumes from."""
        return list(self._frontier)


class MemoryTree:
    """An in-memory `NodeReader` fed by a `TreeBuilder`.

    Used by tests and to rebuild a tree when verifying a whole log. Each level
    is one packed bytearray, since a million-leaf tree would otherwise hold two
    million small bytes objects.
    """

    __slots__ = ("_builder", "_levels")

    def __init__(self) -> None:
        self._builder = TreeBuilder()
        self._levels: list[bytearray] = []

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._builder.size

    def append(self, leaf: bytes) -> None:
        """Append leaf hash `leaf`, storing every node it completes."""
        levels = self._levels
        for level, _index, value in self._builder.append(leaf):
            if level == len(levels):
                levels.append(bytearray())
            levels[level] += value

    def read_nodes(self, keys: Collection[NodeKey]) -> Mapping[NodeKey, bytes]:
        """Hashes of the requested keys that are stored; absent keys are left out."""
        levels = self._levels
        found: dict[NodeKey, bytes] = {}
        for key in keys:
            level, index = key
            if 0 <= level < len(levels) and index >= 0:
                offset = index * HASH_SIZE
                value = bytes(levels[level][offset : offset + HASH_SIZE])
                if value:
                    found[key] = value
        return found

    def root(self) -> bytes:
        """Current MTH (EMPTY_ROOT when empty)."""
        return self._builder.root()


# --- storage as tiles ------------------------------------------------------------------
#
# A log stores each node of its tree once it exists. Row by row that is two rows per
# entry, and inserting them was a third of a bulk import's database work; so nodes are
# stored in *tiles*, as C2SP tlog-tiles groups them. Tile (L, N) holds the nodes of tree
# levels 8L … 8L+7 below it: 256 hashes of level 8L (indices 256N … 256N+255), then the
# 128 of level 8L+1 above them, and so on up to the 2 of level 8L+7, 510 hashes in all.
# A tile is written by the append that completes it; until then its nodes are stored
# one by one (so a tile's first nodes can be in both places: they are the same hashes).

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
# Where each level of a tile starts, in hashes: 0, 256, 384, … 508; then the total, 510.
_TILE_OFFSETS = tuple(sum(TILE_WIDTH >> below for below in range(sub)) for sub in range(9))
TILE_HASHES = _TILE_OFFSETS[TILE_HEIGHT]
TILE_BYTES = TILE_HASHES * HASH_SIZE

TileKey: TypeAlias = tuple[int, int]
"""``(tile level, index)``: tile level L holds tree levels 8L … 8L+7."""


def tile_of(key: NodeKey) -> tuple[TileKey, int]:
    """The tile holding node `key`, and the node's offset in it (in bytes)."""
    level, index = key
    tile_level, sub = divmod(level, TILE_HEIGHT)
    tile_index, position = divmod(index, TILE_WIDTH >> sub)
    return (tile_level, tile_index), (_TILE_OFFSETS[sub] + position) * HASH_SIZE


def complete_tiles(size: int, tile_level: int) -> int:
    """How many tiles of `tile_level` a tree of `size` leaves has completed."""
    return size >> (TILE_HEIGHT * (tile_level + 1))


def pair_hashes(below: bytes | bytearray | memoryview, start: int, stop: int) -> bytes:
    """The parents of node pairs `start` … `stop`-1 of one level, packed."""
    sha256 = _sha256
    width = 2 * HASH_SIZE
    pairs = memoryview(below)  # slices without copies
    return b"".join(
        [
            sha256(_NODE_PREFIX + pairs[offset : offset + width]).digest()
            for offset in range(start * width, stop * width, width)
        ]
    )


def _frontier_levels(size: int, frontier: Sequence[bytes]) -> dict[int, bytes]:
    TreeBuilder(size, frontier)  # checks the frontier's shape
    keys = root_node_keys(size)
    return {level: node for (level, _), node in zip(keys, frontier, strict=True)}


NodeRange: TypeAlias = tuple[int, int, int]
"""``(level, first index, end index)``: nodes of one level, end excluded."""


class Growth:
    """What appending leaves to a tree adds: every new node, the new frontier and root.

    `levels[l]` holds the new nodes of level l, packed: indices ``old >> l`` up to
    ``size >> l``. Hashing level by level, one tight loop each, is a third of the
    cost of climbing the frontier once per leaf (`TreeBuilder`).
    """

    __slots__ = ("frontier", "levels", "old", "root", "size")

    def __init__(self, old: int, frontier: Sequence[bytes], leaves: bytes) -> None:
        if len(leaves) % HASH_SIZE:
            raise InvalidInput(f"leaf hashes come in {HASH_SIZE}-byte units", field="leaves")
        old_at = _frontier_levels(old, frontier)
        size = old + len(leaves) // HASH_SIZE
        levels: list[bytes] = []
        new = leaves
        level = 0
        while new:
            levels.append(new)
            # The first parent's left child is the old frontier node when this level's
            # old width is odd.
            below = old_at[level] + new if (old >> level) & 1 else new
            new = pair_hashes(below, 0, (size >> (level + 1)) - (old >> (level + 1)))
            level += 1
        self._set(old, size, levels, old_at)

    @classmethod
    def from_levels(cls, old: int, frontier: Sequence[bytes], levels: Sequence[bytes]) -> Growth:
        """The growth whose new nodes are `levels` (as `levels` of another), hashing
        nothing but its root: the caller knows that only the new right edge, which the
        root covers, is checked."""
        old_at = _frontier_levels(old, frontier)
        size = old + (len(levels[0]) // HASH_SIZE if levels else 0)
        for level, new in enumerate(levels):
            if len(new) != ((size >> level) - (old >> level)) * HASH_SIZE:
                raise InvalidInput(f"wrong number of new nodes in level {level}", field="levels")
        if size >> len(levels) != old >> len(levels):
            raise InvalidInput("levels are missing at the top", field="levels")
        growth = cls.__new__(cls)
        growth._set(old, size, list(levels), old_at)
        return growth

    def _set(self, old: int, size: int, levels: list[bytes], old_at: dict[int, bytes]) -> None:
        self.old = old
        self.size = size
        self.levels = levels
        self.frontier = tuple(
            self.node(level, index) if index >= old >> level else old_at[level]
            for level, index in root_node_keys(size)
        )
        self.root = fold_root(self.frontier)

    def node(self, level: int, index: int) -> bytes:
        """A new node (`index` at least ``old >> level``)."""
        offset = (index - (self.old >> level)) * HASH_SIZE
        return self.levels[level][offset : offset + HASH_SIZE]

    def completed_edge(self) -> list[NodeRange]:
        """The old nodes the tiles this growth completes hold: the caller reads them
        from where they are stored one by one (`stored`)."""
        ranges = []
        for tile_level in range((len(self.levels) + TILE_HEIGHT - 1) // TILE_HEIGHT):
            first = complete_tiles(self.old, tile_level)
            if complete_tiles(self.size, tile_level) == first:
                continue
            for sub in range(TILE_HEIGHT):
                level = tile_level * TILE_HEIGHT + sub
                start, end = first * (TILE_WIDTH >> sub), self.old >> level
                if start < end:
                    ranges.append((level, start, end))
        return ranges

    def stored(
        self, edge: Mapping[NodeKey, bytes]
    ) -> tuple[list[tuple[int, int, bytes]], list[tuple[int, int, bytes]]]:
        """What to store: the tiles completed, as (tile level, index, hashes), and the
        new nodes of tiles still incomplete, as (level, index, hash). `edge` holds the
        nodes `completed_edge` names."""
        tiles: list[tuple[int, int, bytes]] = []
        nodes: list[tuple[int, int, bytes]] = []
        for level in range(len(self.levels)):
            tile_level, sub = divmod(level, TILE_HEIGHT)
            width = TILE_WIDTH >> sub
            # New nodes from the first index of an incomplete tile on are stored alone.
            alone = max(self.old >> level, complete_tiles(self.size, tile_level) * width)
            nodes.extend(
                (level, index, self.node(level, index))
                for index in range(alone, self.size >> level)
            )
        for tile_level in range((len(self.levels) + TILE_HEIGHT - 1) // TILE_HEIGHT):
            for index in range(
                complete_tiles(self.old, tile_level), complete_tiles(self.size, tile_level)
            ):
                tiles.append((tile_level, index, self._tile(tile_level, index, edge)))
        return tiles, nodes

    def _tile(self, tile_level: int, index: int, edge: Mapping[NodeKey, bytes]) -> bytes:
        parts: list[bytes] = []
        for sub in range(TILE_HEIGHT):
            level = tile_level * TILE_HEIGHT + sub
            width = TILE_WIDTH >> sub
            start, end = index * width, (index + 1) * width
            first_new = max(start, self.old >> level)
            parts.extend(edge[level, old] for old in range(start, first_new))
            base = self.old >> level
            new = self.levels[level]
            parts.append(new[(first_new - base) * HASH_SIZE : (end - base) * HASH_SIZE])
        return b"".join(parts)
