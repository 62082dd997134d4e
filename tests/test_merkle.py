"""Tests for ledger.tlog.merkle: RFC 9162 known answers, an independent reference and pymerkle.

The reference below is transcribed from the recursive definitions in RFC 9162
§2.1.1 (MTH), §2.1.3.1 (PATH) and §2.1.4.1 (SUBPROOF) and shares no code with
the module under test, so agreement means the stored-node algorithms are right.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.errors import InvalidInput, NotFound, VerificationError
from ledger.tlog.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    TILE_HASHES,
    Growth,
    MemoryTree,
    NodeKey,
    TreeBuilder,
    complete_tiles,
    consistency_proof,
    consistency_proof_keys,
    fold_root,
    inclusion_proof,
    inclusion_proof_keys,
    leaf_hash,
    node_hash,
    range_node_keys,
    range_proof,
    root_node_keys,
    tile_of,
    tree_root,
    verify_consistency,
    verify_inclusion,
    verify_range,
)

# --------------------------------------------------------------------------
# Known-answer vectors


def _vectors_path() -> Path:
    override = os.environ.get("CONSENT_LEDGER_VECTORS")
    if override:
        candidate = Path(override)
        return candidate / "rfc6962.json" if candidate.is_dir() else candidate
    # Vendored copies of the published vectors, so they run on every machine.
    return Path(__file__).resolve().parent / "vectors" / "rfc6962.json"


def _load_vectors() -> dict[str, Any] | None:
    path = _vectors_path()
    if not path.is_file():
        return None
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


VECTORS = _load_vectors()
_NO_VECTORS = (
    f"RFC 6962 vectors not found at {_vectors_path()} "
    "(set CONSENT_LEDGER_VECTORS to the file or its directory)"
)


def _vector_cases(section: str) -> list[Any]:
    # Parametrize from the file when present; otherwise one skipped case that
    # says why, instead of silently collecting nothing.
    if VECTORS is None:
        return [pytest.param(None, marks=pytest.mark.skip(reason=_NO_VECTORS))]
    return [pytest.param(case, id=str(i)) for i, case in enumerate(VECTORS[section])]


def _vector_sizes() -> list[Any]:
    if VECTORS is None:
        return [pytest.param(None, marks=pytest.mark.skip(reason=_NO_VECTORS))]
    return list(range(len(VECTORS["roots_by_size"])))


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    if VECTORS is None:
        pytest.skip(_NO_VECTORS)
    return VECTORS


@pytest.fixture(scope="module")
def vector_tree(vectors: dict[str, Any]) -> MemoryTree:
    tree = MemoryTree()
    for data in vectors["leaf_inputs"]:
        tree.append(leaf_hash(bytes.fromhex(data)))
    return tree


def _hexes(hashes: Sequence[bytes]) -> list[str]:
    return [h.hex() for h in hashes]


def _unhex(values: Sequence[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


def test_empty_root_is_sha256_of_empty_string(vectors: dict[str, Any]) -> None:
    assert EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert EMPTY_ROOT.hex() == vectors["empty_root"]
    assert fold_root([]) == EMPTY_ROOT
    assert MemoryTree().root() == EMPTY_ROOT
    assert tree_root(MemoryTree(), 0) == EMPTY_ROOT


def test_leaf_hashes_match_rfc6962_vectors(vectors: dict[str, Any]) -> None:
    computed = [leaf_hash(bytes.fromhex(d)).hex() for d in vectors["leaf_inputs"]]
    assert computed == vectors["leaf_hashes"]


@pytest.mark.parametrize("size", _vector_sizes())
def test_root_at_every_size_matches_rfc6962_vectors(
    size: int, vectors: dict[str, Any], vector_tree: MemoryTree
) -> None:
    expected = vectors["roots_by_size"][size]
    # Historical root from the full store, and the live root of a tree of that size.
    assert tree_root(vector_tree, size).hex() == expected
    builder = TreeBuilder()
    for data in vectors["leaf_inputs"][:size]:
        builder.append(leaf_hash(bytes.fromhex(data)))
    assert builder.root().hex() == expected


@pytest.mark.parametrize("case", _vector_cases("inclusion"))
def test_inclusion_proof_matches_rfc6962_vectors(
    case: dict[str, Any], vectors: dict[str, Any], vector_tree: MemoryTree
) -> None:
    index, size = case["index"], case["tree_size"]
    assert _hexes(inclusion_proof(vector_tree, index, size)) == case["proof"]
    verify_inclusion(
        bytes.fromhex(vectors["leaf_hashes"][index]),
        index,
        size,
        _unhex(case["proof"]),
        bytes.fromhex(vectors["roots_by_size"][size]),
    )


@pytest.mark.parametrize("case", _vector_cases("consistency"))
def test_consistency_proof_matches_rfc6962_vectors(
    case: dict[str, Any], vectors: dict[str, Any], vector_tree: MemoryTree
) -> None:
    old, new = case["old_size"], case["new_size"]
    assert _hexes(consistency_proof(vector_tree, old, new)) == case["proof"]
    verify_consistency(
        old,
        new,
        bytes.fromhex(vectors["roots_by_size"][old]),
        bytes.fromhex(vectors["roots_by_size"][new]),
        _unhex(case["proof"]),
    )


# --------------------------------------------------------------------------
# Independent reference, straight from the RFC 9162 definitions


def _largest_power_of_two_below(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class ReferenceTree:
    """MTH / PATH / SUBPROOF over raw leaf inputs, recursive as in the RFC text."""

    def __init__(self, inputs: Sequence[bytes]) -> None:
        self.inputs = list(inputs)
        self._mth: dict[tuple[int, int], bytes] = {}

    def mth(self, lo: int, hi: int) -> bytes:
        cached = self._mth.get((lo, hi))
        if cached is not None:
            return cached
        n = hi - lo
        if n == 0:
            result = hashlib.sha256(b"").digest()
        elif n == 1:
            result = hashlib.sha256(b"\x00" + self.inputs[lo]).digest()
        else:
            k = _largest_power_of_two_below(n)
            result = hashlib.sha256(b"\x01" + self.mth(lo, lo + k) + self.mth(lo + k, hi)).digest()
        self._mth[(lo, hi)] = result
        return result

    def path(self, m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = _largest_power_of_two_below(n)
        if m < k:
            return self.path(m, lo, lo + k) + [self.mth(lo + k, hi)]
        return self.path(m - k, lo + k, hi) + [self.mth(lo, lo + k)]

    def subproof(self, m: int, lo: int, hi: int, b: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if b else [self.mth(lo, hi)]
        k = _largest_power_of_two_below(n)
        if m <= k:
            return self.subproof(m, lo, lo + k, b) + [self.mth(lo + k, hi)]
        return self.subproof(m - k, lo + k, hi, False) + [self.mth(lo, lo + k)]

    def inclusion(self, index: int, size: int) -> list[bytes]:
        return self.path(index, 0, size)

    def consistency(self, old: int, new: int) -> list[bytes]:
        return self.subproof(old, 0, new, True) if 0 < old < new else []


MAX_SIZE = 2000


def _input(i: int) -> bytes:
    return b"consent-ledger test entry %d" % i


@pytest.fixture(scope="module")
def inputs() -> list[bytes]:
    return [_input(i) for i in range(MAX_SIZE)]


@pytest.fixture(scope="module")
def reference(inputs: list[bytes]) -> ReferenceTree:
    return ReferenceTree(inputs)


@pytest.fixture(scope="module")
def big_tree(inputs: list[bytes]) -> MemoryTree:
    # One store for every size: proofs for smaller sizes come from the same
    # nodes, as they do from the database for historical checkpoints.
    tree = MemoryTree()
    for data in inputs:
        tree.append(leaf_hash(data))
    return tree


_given_settings = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@st.composite
def size_and_index(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(1, MAX_SIZE))
    return size, draw(st.integers(0, size - 1))


@st.composite
def two_sizes(draw: st.DrawFn) -> tuple[int, int]:
    new = draw(st.integers(0, MAX_SIZE))
    return draw(st.integers(0, new)), new


def test_roots_match_reference_at_every_size_up_to_300(
    big_tree: MemoryTree, reference: ReferenceTree
) -> None:
    for size in range(301):
        assert tree_root(big_tree, size) == reference.mth(0, size), size


def test_every_proof_in_small_trees_matches_reference_and_verifies(
    big_tree: MemoryTree, reference: ReferenceTree
) -> None:
    # Exhaustive over all (index, size) and (old, new) pairs up to 40 leaves:
    # covers every shape of right edge the small cases can produce.
    for new in range(41):
        new_root = reference.mth(0, new)
        for index in range(new):
            proof = inclusion_proof(big_tree, index, new)
            assert proof == reference.inclusion(index, new), (index, new)
            verify_inclusion(reference.mth(index, index + 1), index, new, proof, new_root)
        for old in range(new + 1):
            proof = consistency_proof(big_tree, old, new)
            assert proof == reference.consistency(old, new), (old, new)
            verify_consistency(old, new, reference.mth(0, old), new_root, proof)


@_given_settings
@given(size_and_index())
def test_inclusion_proof_matches_reference_and_verifies(
    big_tree: MemoryTree, reference: ReferenceTree, case: tuple[int, int]
) -> None:
    size, index = case
    proof = inclusion_proof(big_tree, index, size)
    assert proof == reference.inclusion(index, size)
    verify_inclusion(reference.mth(index, index + 1), index, size, proof, reference.mth(0, size))


@_given_settings
@given(two_sizes())
def test_consistency_proof_matches_reference_and_verifies(
    big_tree: MemoryTree, reference: ReferenceTree, case: tuple[int, int]
) -> None:
    old, new = case
    proof = consistency_proof(big_tree, old, new)
    assert proof == reference.consistency(old, new)
    verify_consistency(old, new, reference.mth(0, old), reference.mth(0, new), proof)


def test_appended_nodes_are_the_perfect_subtree_hashes(reference: ReferenceTree) -> None:
    builder = TreeBuilder()
    seen: set[NodeKey] = set()
    for i in range(300):
        for level, index, value in builder.append(leaf_hash(_input(i))):
            assert (level, index) not in seen
            seen.add((level, index))
            width = 1 << level
            assert value == reference.mth(index * width, (index + 1) * width)
        # Every perfect aligned subtree inside [0, size) has been emitted exactly once.
        size = i + 1
        assert len(seen) == sum(size >> level for level in range(size.bit_length()))


# --------------------------------------------------------------------------
# Cross-check against pymerkle (an independent implementation)


def test_roots_and_inclusion_paths_match_pymerkle(inputs: list[bytes]) -> None:
    pymerkle = pytest.importorskip("pymerkle")
    # pymerkle's default "security" mode is the RFC 9162 0x00/0x01 prefixing.
    other = pymerkle.InmemoryTree(algorithm="sha256")
    ours = MemoryTree()
    sizes = 300
    for data in inputs[:sizes]:
        other.append_entry(data)
        ours.append(leaf_hash(data))
        assert ours.root() == other.get_root()
    assert other.get_leaf(1) == leaf_hash(inputs[0])
    for size in range(1, sizes + 1, 7):
        assert tree_root(ours, size) == other.get_root(size)
        for index in range(0, size, 3):
            # pymerkle puts the leaf hash first, then the RFC audit path, and
            # counts leaves from one.
            theirs = other.prove_inclusion(index + 1, size).path
            assert theirs[0] == leaf_hash(inputs[index])
            assert inclusion_proof(ours, index, size) == theirs[1:]


# --------------------------------------------------------------------------
# Tampering


def _flip(value: bytes, position: int) -> bytes:
    return value[:position] + bytes([value[position] ^ 0x01]) + value[position + 1 :]


@_given_settings
@given(size_and_index(), st.data())
def test_tampered_inclusion_proofs_leaves_roots_and_indices_fail(
    big_tree: MemoryTree,
    reference: ReferenceTree,
    case: tuple[int, int],
    data: st.DataObject,
) -> None:
    size, index = case
    proof = inclusion_proof(big_tree, index, size)
    leaf = reference.mth(index, index + 1)
    root = reference.mth(0, size)
    byte = data.draw(st.integers(0, HASH_SIZE - 1), label="byte")

    with pytest.raises(VerificationError):
        verify_inclusion(_flip(leaf, byte), index, size, proof, root)
    with pytest.raises(VerificationError):
        verify_inclusion(leaf, index, size, proof, _flip(root, byte))
    with pytest.raises(VerificationError):
        verify_inclusion(leaf, index, size, [*proof, root], root)
    if proof:
        position = data.draw(st.integers(0, len(proof) - 1), label="position")
        bad = list(proof)
        bad[position] = _flip(bad[position], byte)
        with pytest.raises(VerificationError):
            verify_inclusion(leaf, index, size, bad, root)
        with pytest.raises(VerificationError):
            verify_inclusion(leaf, index, size, proof[:-1], root)
    if size > 1:
        other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index), label="other")
        with pytest.raises(VerificationError):
            verify_inclusion(leaf, other, size, proof, root)


@_given_settings
@given(two_sizes().filter(lambda c: 0 < c[0] < c[1]), st.data())
def test_tampered_consistency_proofs_and_roots_fail(
    big_tree: MemoryTree,
    reference: ReferenceTree,
    case: tuple[int, int],
    data: st.DataObject,
) -> None:
    old, new = case
    proof = consistency_proof(big_tree, old, new)
    old_root, new_root = reference.mth(0, old), reference.mth(0, new)
    byte = data.draw(st.integers(0, HASH_SIZE - 1), label="byte")
    position = data.draw(st.integers(0, len(proof) - 1), label="position")
    bad = list(proof)
    bad[position] = _flip(bad[position], byte)

    with pytest.raises(VerificationError):
        verify_consistency(old, new, old_root, new_root, bad)
    with pytest.raises(VerificationError):
        verify_consistency(old, new, _flip(old_root, byte), new_root, proof)
    with pytest.raises(VerificationError):
        verify_consistency(old, new, old_root, _flip(new_root, byte), proof)
    with pytest.raises(VerificationError):
        verify_consistency(old, new, old_root, new_root, proof[:-1])
    with pytest.raises(VerificationError):
        verify_consistency(old, new, old_root, new_root, [*proof, new_root])


def test_consistency_from_empty_tree_accepts_only_an_empty_proof() -> None:
    any_root = leaf_hash(b"anything")
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 5, EMPTY_ROOT, any_root, [])
    with pytest.raises(VerificationError, match="empty"):
        verify_consistency(0, 5, EMPTY_ROOT, any_root, [any_root])


def test_consistency_between_equal_sizes_needs_equal_roots_and_empty_proof() -> None:
    root = leaf_hash(b"root")
    verify_consistency(7, 7, root, root, [])
    with pytest.raises(VerificationError, match="roots differ"):
        verify_consistency(7, 7, root, leaf_hash(b"other"), [])
    with pytest.raises(VerificationError, match="must be empty"):
        verify_consistency(7, 7, root, root, [root])


@pytest.mark.parametrize(("old", "new"), [(0, 0), (0, 9), (9, 9), (1, 1)])
def test_trivial_consistency_proofs_are_empty(big_tree: MemoryTree, old: int, new: int) -> None:
    assert consistency_proof_keys(old, new) == []
    assert consistency_proof(big_tree, old, new) == []


@pytest.mark.parametrize(
    ("index", "size"),
    [(0, 0), (1, 1), (5, 5), (-1, 4), (0, -1)],
)
def test_verify_inclusion_rejects_impossible_positions(index: int, size: int) -> None:
    leaf = leaf_hash(b"x")
    with pytest.raises(VerificationError, match="outside"):
        verify_inclusion(leaf, index, size, [], leaf)


def test_verify_rejects_malformed_hashes() -> None:
    leaf = leaf_hash(b"x")
    with pytest.raises(VerificationError, match="32-byte"):
        verify_inclusion(leaf, 0, 2, [b"short"], leaf)
    with pytest.raises(VerificationError, match="32-byte"):
        verify_consistency(1, 2, leaf, leaf, [leaf + b"\x00"])
    with pytest.raises(VerificationError, match="cannot be consistent"):
        verify_consistency(3, 2, leaf, leaf, [leaf])


# --------------------------------------------------------------------------
# TreeBuilder resumption


@_given_settings
@given(two_sizes())
def test_builder_resumed_from_frontier_continues_like_one_built_from_scratch(
    big_tree: MemoryTree, case: tuple[int, int]
) -> None:
    start, end = case
    frontier_keys = root_node_keys(start)
    stored = big_tree.read_nodes(frontier_keys)
    resumed = TreeBuilder(start, [stored[key] for key in frontier_keys])

    scratch = TreeBuilder()
    for i in range(start):
        scratch.append(leaf_hash(_input(i)))
    assert scratch.frontier() == resumed.frontier()
    assert scratch.root() == resumed.root()

    for i in range(start, end):
        assert resumed.append(leaf_hash(_input(i))) == scratch.append(leaf_hash(_input(i)))
    assert resumed.size == scratch.size == end
    assert resumed.root() == scratch.root() == tree_root(big_tree, end)
    assert resumed.frontier() == scratch.frontier()


def test_builder_frontier_has_one_hash_per_set_bit_of_size() -> None:
    builder = TreeBuilder()
    for i in range(100):
        builder.append(leaf_hash(_input(i)))
        assert len(builder.frontier()) == builder.size.bit_count()
        # Mutating the returned list must not corrupt the builder.
        builder.frontier().clear()
    assert builder.size == 100


@pytest.mark.parametrize(
    ("size", "frontier", "match"),
    [
        (-1, [], "negative"),
        (3, [bytes(32)], "2 frontier hashes"),
        (1, [], "1 frontier hashes"),
        (1, [b"short"], "32-byte"),
    ],
)
def test_builder_rejects_inconsistent_starting_state(
    size: int, frontier: list[bytes], match: str
) -> None:
    with pytest.raises(InvalidInput, match=match):
        TreeBuilder(size, frontier)


def test_builder_rejects_leaf_that_is_not_a_hash() -> None:
    with pytest.raises(InvalidInput, match="32 bytes"):
        TreeBuilder().append(b"raw entry bytes rather than a leaf hash")


# --------------------------------------------------------------------------
# Invalid arguments and missing nodes


@pytest.mark.parametrize(
    ("index", "size", "match"),
    [(0, 0, "empty tree"), (3, 3, "outside"), (10, 3, "outside"), (-1, 3, "negative")],
)
def test_inclusion_proof_rejects_invalid_arguments(
    big_tree: MemoryTree, index: int, size: int, match: str
) -> None:
    with pytest.raises(InvalidInput, match=match):
        inclusion_proof_keys(index, size)
    with pytest.raises(InvalidInput, match=match):
        inclusion_proof(big_tree, index, size)


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [(5, 4, "larger than"), (-1, 4, "negative"), (0, -2, "negative")],
)
def test_consistency_proof_rejects_invalid_arguments(
    big_tree: MemoryTree, old: int, new: int, match: str
) -> None:
    with pytest.raises(InvalidInput, match=match):
        consistency_proof_keys(old, new)
    with pytest.raises(InvalidInput, match=match):
        consistency_proof(big_tree, old, new)


def test_root_node_keys_rejects_negative_size() -> None:
    with pytest.raises(InvalidInput, match="negative"):
        root_node_keys(-1)


def test_proofs_beyond_the_stored_tree_raise_not_found(big_tree: MemoryTree) -> None:
    with pytest.raises(NotFound, match="not stored"):
        inclusion_proof(big_tree, 0, MAX_SIZE + 1)
    with pytest.raises(NotFound, match="not stored"):
        consistency_proof(big_tree, 3, MAX_SIZE + 5)
    with pytest.raises(NotFound, match="not stored"):
        tree_root(big_tree, MAX_SIZE + 1)


class _ForgetfulReader:
    """Returns every requested node but one, like a store with a gap."""

    def __init__(self, inner: MemoryTree) -> None:
        self.inner = inner

    def read_nodes(self, keys: Collection[NodeKey]) -> Mapping[NodeKey, bytes]:
        found = dict(self.inner.read_nodes(keys))
        found.pop(next(iter(keys)))
        return found


def test_reader_returning_fewer_keys_raises_not_found(big_tree: MemoryTree) -> None:
    reader = _ForgetfulReader(big_tree)
    with pytest.raises(NotFound):
        inclusion_proof(reader, 17, 1000)
    with pytest.raises(NotFound):
        consistency_proof(reader, 17, 1000)
    with pytest.raises(NotFound):
        tree_root(reader, 1000)


# --------------------------------------------------------------------------
# Cost: one read of O(log n) keys, never a scan


class _CountingReader:
    def __init__(self, inner: MemoryTree) -> None:
        self.inner = inner
        self.calls: list[list[NodeKey]] = []

    def read_nodes(self, keys: Collection[NodeKey]) -> Mapping[NodeKey, bytes]:
        self.calls.append(list(keys))
        return self.inner.read_nodes(keys)


def _key_bound(size: int) -> int:
    return 2 * math.ceil(math.log2(size)) + 2 if size > 1 else 2


@settings(max_examples=500, deadline=None)
@given(
    st.integers(1, 2**48).flatmap(
        lambda size: st.tuples(st.just(size), st.integers(0, size - 1), st.integers(0, size))
    )
)
def test_proofs_need_logarithmically_many_distinct_keys(case: tuple[int, int, int]) -> None:
    size, index, old = case
    for keys in (
        inclusion_proof_keys(index, size),
        consistency_proof_keys(old, size),
        root_node_keys(size),
    ):
        assert len(keys) <= _key_bound(size)
        assert len(set(keys)) == len(keys)
        for level, node_index in keys:
            # Only complete subtrees of the tree of this size are ever asked for.
            assert (node_index + 1) << level <= size


@_given_settings
@given(size_and_index(), st.integers(0, MAX_SIZE))
def test_proof_generation_reads_store_once(
    big_tree: MemoryTree, case: tuple[int, int], old: int
) -> None:
    size, index = case
    old = min(old, size)
    reader = _CountingReader(big_tree)
    inclusion_proof(reader, index, size)
    assert len(reader.calls) <= 1
    assert all(call == inclusion_proof_keys(index, size) for call in reader.calls)

    reader.calls.clear()
    consistency_proof(reader, old, size)
    assert len(reader.calls) <= 1
    assert all(call == consistency_proof_keys(old, size) for call in reader.calls)


def test_node_hash_is_prefixed_concatenation() -> None:
    left, right = leaf_hash(b"l"), leaf_hash(b"r")
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert fold_root([left, right]) == node_hash(left, right)
    assert fold_root([left]) == left


# --- storage as tiles ----------------------------------------------------------------------


def grow_in_appends(sizes: Sequence[int], seed: int = 0) -> tuple[MemoryTree, dict[Any, bytes]]:
    """Append leaves in appends of `sizes` through `Growth`, keeping what it says to store
    (tiles and lone nodes) as a store would; and the same leaves in a `MemoryTree`."""
    rng = random.Random(seed)
    reference = MemoryTree()
    alone: dict[tuple[int, int], bytes] = {}
    tiles: dict[tuple[int, int], bytes] = {}
    size, frontier = 0, ()
    for count in sizes:
        leaves = [rng.randbytes(32) for _ in range(count)]
        for leaf in leaves:
            reference.append(leaf)
        growth = Growth(size, frontier, b"".join(leaves))
        edge = {
            (level, index): alone[level, index]
            for level, start, end in growth.completed_edge()
            for index in range(start, end)
        }
        new_tiles, nodes = growth.stored(edge)
        for level, index, node in nodes:
            assert (level, index) not in alone, "a node is stored alone once"
            alone[level, index] = node
        for tile_level, index, hashes in new_tiles:
            assert (tile_level, index) not in tiles, "a tile is written once"
            assert len(hashes) == TILE_HASHES * 32
            tiles[tile_level, index] = hashes
        assert growth.root == reference.root()
        assert list(growth.frontier) == [
            reference.read_nodes([key])[key] for key in root_node_keys(growth.size)
        ]
        size, frontier = growth.size, growth.frontier
    return reference, {"alone": alone, "tiles": tiles}


def assert_stored_exactly(reference: MemoryTree, store: dict[Any, Any]) -> None:
    """Every node of `reference` is in a complete tile or stored alone, and matches."""
    size = reference.size
    level = 0
    while size >> level:
        for index in range(size >> level):
            expected = reference.read_nodes([(level, index)])[(level, index)]
            (tile, offset) = tile_of((level, index))
            if tile in store["tiles"]:
                assert store["tiles"][tile][offset : offset + 32] == expected
                assert complete_tiles(size, tile[0]) > tile[1]
            else:
                assert store["alone"][level, index] == expected, (level, index)
        level += 1
    for tile_level, index in store["tiles"]:
        assert index < complete_tiles(size, tile_level)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=12))
def test_growth_stores_every_node_once_in_a_tile_or_alone(sizes: list[int]) -> None:
    reference, store = grow_in_appends(sizes)
    assert_stored_exactly(reference, store)


@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param([1] * 600, id="one-leaf-appends"),
        pytest.param([255, 1, 65_280, 3, 1_000], id="tiles-of-level-1"),
        pytest.param([70_000], id="one-big-append"),
    ],
)
def test_growth_across_tile_boundaries(sizes: list[int]) -> None:
    reference, store = grow_in_appends(sizes)
    assert_stored_exactly(reference, store)
    if sum(sizes) > 65_536:
        assert (1, 0) in store["tiles"]


def test_a_tile_holds_its_levels_bottom_up() -> None:
    assert tile_of((0, 0)) == ((0, 0), 0)
    assert tile_of((0, 257)) == ((0, 1), 32)
    assert tile_of((1, 0)) == ((0, 0), 256 * 32)
    assert tile_of((7, 3)) == ((0, 1), 509 * 32)
    assert tile_of((8, 0)) == ((1, 0), 0)


def test_growth_refuses_a_ragged_leaf_string() -> None:
    with pytest.raises(InvalidInput, match="32-byte units"):
        Growth(0, (), b"\x00" * 33)


# --- range proofs: a run of leaves proven at once (the change feed's pages) ----------------


@st.composite
def leaf_range(draw: st.DrawFn) -> tuple[int, int, int]:
    size = draw(st.integers(1, MAX_SIZE))
    start = draw(st.integers(0, size - 1))
    return start, draw(st.integers(start + 1, size)), size


def test_range_node_keys_are_aligned_and_cover_the_range_exactly() -> None:
    for start in range(70):
        for end in range(start, 70):
            keys = range_node_keys(start, end)
            position = start
            for level, index in keys:
                assert index << level == position, (start, end, keys)
                position += 1 << level
            assert position == end


@_given_settings
@given(leaf_range())
def test_range_proof_with_its_leaves_gives_the_root(
    big_tree: MemoryTree, reference: ReferenceTree, case: tuple[int, int, int]
) -> None:
    start, end, size = case
    leaves = [reference.mth(i, i + 1) for i in range(start, end)]
    proof = range_proof(big_tree, start, end, size)
    verify_range(start, leaves, size, proof, reference.mth(0, size))


@_given_settings
@given(leaf_range(), st.data())
def test_tampered_range_proofs_leaves_and_positions_fail(
    big_tree: MemoryTree, reference: ReferenceTree, case: tuple[int, int, int], data: st.DataObject
) -> None:
    start, end, size = case
    root = reference.mth(0, size)
    leaves = [reference.mth(i, i + 1) for i in range(start, end)]
    proof = range_proof(big_tree, start, end, size)
    other = leaf_hash(b"not in the log")
    swapped = list(leaves)
    swapped[data.draw(st.integers(0, len(leaves) - 1))] = other
    with pytest.raises(VerificationError):
        verify_range(start, swapped, size, proof, root)
    if proof:
        forged = list(proof)
        forged[data.draw(st.integers(0, len(proof) - 1))] = other
        with pytest.raises(VerificationError):
            verify_range(start, leaves, size, forged, root)
    # The same leaves claimed at another position, or with one left out, do not verify.
    if start > 0:
        with pytest.raises(VerificationError):
            verify_range(start - 1, leaves, size, proof, root)
    if len(leaves) > 1:
        with pytest.raises(VerificationError):
            verify_range(start, leaves[:-1], size, proof, root)


def test_range_proof_rejects_empty_and_impossible_ranges(big_tree: MemoryTree) -> None:
    with pytest.raises(InvalidInput):
        range_proof(big_tree, 3, 3, 10)
    with pytest.raises(InvalidInput):
        range_proof(big_tree, 5, 11, 10)
    with pytest.raises(VerificationError, match="not a non-empty range"):
        verify_range(0, [], 4, [], EMPTY_ROOT)
