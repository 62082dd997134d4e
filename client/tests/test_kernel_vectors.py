"""The client's copy of the log kernel against published known answers.

The vectors are the repository's (tests/vectors: RFC 6962 / RFC 9162 Merkle
trees, C2SP signed notes), read from this checkout; these run the copy with
only the client's own dependencies installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from consent_ledger_client._kernel.errors import InvalidInput, VerificationError
from consent_ledger_client._kernel.tlog import merkle
from consent_ledger_client._kernel.tlog.canonical import canonical_bytes, parse_canonical
from consent_ledger_client._kernel.tlog.notes import VerifierKey, open_checkpoint, verify_note

VECTORS = Path(__file__).resolve().parents[2] / "tests" / "vectors"


def _load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return document


TREE = _load("rfc6962.json")
NOTES = _load("signed-note.json")["cases"]


def _hashes(values: list[str]) -> list[bytes]:
    return [bytes.fromhex(value) for value in values]


def test_leaf_hashes_roots_and_proofs_match_rfc6962() -> None:
    tree = merkle.MemoryTree()
    assert tree.root() == bytes.fromhex(TREE["empty_root"])
    for size, (data, leaf) in enumerate(zip(TREE["leaf_inputs"], TREE["leaf_hashes"], strict=True)):
        assert merkle.leaf_hash(bytes.fromhex(data)) == bytes.fromhex(leaf)
        tree.append(bytes.fromhex(leaf))
        assert tree.root() == bytes.fromhex(TREE["roots_by_size"][size + 1]), size + 1
    for case in TREE["inclusion"]:
        proof = merkle.inclusion_proof(tree, case["index"], case["tree_size"])
        assert proof == _hashes(case["proof"])
    for case in TREE["consistency"]:
        proof = merkle.consistency_proof(tree, case["old_size"], case["new_size"])
        assert proof == _hashes(case["proof"])


@pytest.mark.parametrize(
    "case", TREE["inclusion"], ids=lambda c: f"{c['index']}-of-{c['tree_size']}"
)
def test_rfc6962_inclusion_proofs_verify_and_tampered_ones_fail(case: dict[str, Any]) -> None:
    leaf = bytes.fromhex(TREE["leaf_hashes"][case["index"]])
    root = bytes.fromhex(TREE["roots_by_size"][case["tree_size"]])
    proof = _hashes(case["proof"])
    merkle.verify_inclusion(leaf, case["index"], case["tree_size"], proof, root)
    with pytest.raises(VerificationError):
        merkle.verify_inclusion(leaf, case["index"], case["tree_size"], proof, bytes(32))
    if proof:
        tampered = [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]
        with pytest.raises(VerificationError):
            merkle.verify_inclusion(leaf, case["index"], case["tree_size"], tampered, root)


@pytest.mark.parametrize(
    "case", TREE["consistency"], ids=lambda c: f"{c['old_size']}-to-{c['new_size']}"
)
def test_rfc6962_consistency_proofs_verify_and_tampered_ones_fail(case: dict[str, Any]) -> None:
    old, new = case["old_size"], case["new_size"]
    old_root = bytes.fromhex(TREE["roots_by_size"][old])
    new_root = bytes.fromhex(TREE["roots_by_size"][new])
    proof = _hashes(case["proof"])
    merkle.verify_consistency(old, new, old_root, new_root, proof)
    if proof:
        tampered = [*proof[:-1], bytes([proof[-1][0] ^ 1]) + proof[-1][1:]]
        with pytest.raises(VerificationError):
            merkle.verify_consistency(old, new, old_root, new_root, tampered)


@pytest.mark.parametrize("case", NOTES, ids=lambda c: c["source"].split(" ")[0])
def test_signed_note_vectors_verify_and_a_changed_text_fails(case: dict[str, Any]) -> None:
    key = VerifierKey.parse(case["verifier_key"])
    assert str(key) == case["verifier_key"]
    note, verified = verify_note(f"{case['text']}\n{case['signature_line']}\n", [key])
    assert note.text == case["text"]
    assert verified == [key]
    tampered = case["text"].replace("\n", " \n", 1)
    with pytest.raises(VerificationError):
        verify_note(f"{tampered}\n{case['signature_line']}\n", [key])


def test_a_real_sum_golang_org_checkpoint_opens() -> None:
    (case,) = [c for c in NOTES if c["source"].startswith("sum.golang.org")]
    note = f"{case['text']}\n{case['signature_line']}\n"
    key = VerifierKey.parse(case["verifier_key"])
    checkpoint = open_checkpoint(note, [key], origin="go.sum database tree")
    assert checkpoint.size == 30055305
    with pytest.raises(VerificationError, match="expected"):
        open_checkpoint(note, [key], origin="another.example/log")


def test_canonical_bytes_are_jcs_outside_the_fast_path_too() -> None:
    # A non-ASCII key takes the rfc8785 path: the dependency must be there.
    document = {"é": 1, "z": "x\u2028", "a": [1, {"b": None}], "E": True}
    encoded = canonical_bytes(document)
    assert encoded == b'{"E":true,"a":[1,{"b":null}],"z":"x\xe2\x80\xa8","\xc3\xa9":1}'
    assert parse_canonical(encoded) == document
    with pytest.raises(InvalidInput, match="floats"):
        canonical_bytes({"n": 1.5})
    with pytest.raises(VerificationError):
        parse_canonical(b'{"b":1,"a":2}')  # not in canonical order
