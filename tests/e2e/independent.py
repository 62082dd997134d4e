"""An independent verifier, written from the public specifications alone.

C2SP signed-note (Ed25519, key ID = SHA-256(name || 0x0A || 0x01 || pubkey)[:4],
signature lines `— <name> base64(key ID || signature)`), C2SP tlog-checkpoint,
RFC 9162 §2.1 Merkle trees with inclusion (§2.1.3.2) and consistency (§2.1.4.2)
verification, and C2SP tlog-tiles paths and entry bundles. It uses only
`cryptography` and `hashlib` and imports nothing from the project, so a bug in
`ledger/` cannot hide behind the same bug here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class Rejected(Exception):
    """The independent verifier refuses the evidence."""


@dataclass(frozen=True)
class TrustedKey:
    name: str
    key_id: bytes
    public_key: Ed25519PublicKey


def parse_verifier_key(text: str) -> TrustedKey:
    """`<name>+<hex key ID>+<base64(0x01 || Ed25519 public key)>` (C2SP signed-note)."""
    name, key_id_hex, encoded = text.split("+", 2)
    raw = base64.b64decode(encoded, validate=True)
    if len(raw) != 33 or raw[0] != 0x01:
        raise Rejected("not an Ed25519 verifier key")
    key_id = hashlib.sha256(name.encode() + b"\x0a" + raw).digest()[:4]
    if key_id.hex() != key_id_hex:
        raise Rejected("the key ID does not match the key")
    return TrustedKey(name, key_id, Ed25519PublicKey.from_public_bytes(raw[1:]))


def open_signed_note(note: str, key: TrustedKey) -> str:
    """The note's text, if a signature line by `key` verifies over it."""
    split = note.rfind("\n\n")
    if split < 0:
        raise Rejected("no blank line before the signatures")
    text, signatures = note[: split + 1], note[split + 2 :]
    if not signatures.endswith("\n"):
        raise Rejected("the signature block does not end in a newline")
    for line in signatures[:-1].split("\n"):
        dash, name, encoded = line.split(" ")
        if dash != "\u2014":
            raise Rejected(f"not a signature line: {line!r}")
        blob = base64.b64decode(encoded, validate=True)
        if name != key.name or blob[:4] != key.key_id:
            continue  # another key's signature: not ours to check
        try:
            key.public_key.verify(blob[4:], text.encode())
        except InvalidSignature:
            raise Rejected("bad signature") from None
        return text
    raise Rejected("no signature by the trusted key")


def parse_checkpoint(text: str, origin: str) -> tuple[int, bytes]:
    """(tree size, root hash) of a C2SP tlog-checkpoint body with no extension lines."""
    lines = text.split("\n")
    if len(lines) != 4 or lines[3] != "" or lines[0] != origin:
        raise Rejected(f"not a checkpoint of {origin}: {text!r}")
    size = int(lines[1])
    if str(size) != lines[1]:
        raise Rejected("tree size not in canonical decimal")
    root = base64.b64decode(lines[2], validate=True)
    if len(root) != 32:
        raise Rejected("root is not a SHA-256 hash")
    return size, root


@dataclass(frozen=True)
class OpenedCheckpoint:
    origin: str
    size: int
    root: bytes


def open_signed_checkpoint(note: str, verifier_key: str) -> OpenedCheckpoint:
    """The checkpoint in `note`, if the key named by `verifier_key` signed it."""
    key = parse_verifier_key(verifier_key)
    size, root = parse_checkpoint(open_signed_note(note, key), key.name)
    return OpenedCheckpoint(key.name, size, root)


def signature_verifies(note: str, verifier_key: str) -> bool:
    try:
        open_signed_checkpoint(note, verifier_key)
    except Rejected:
        return False
    return True


def make_verifier_key(name: str, public_key: bytes) -> str:
    raw = b"\x01" + public_key
    key_id = hashlib.sha256(name.encode() + b"\x0a" + raw).digest()[:4]
    return f"{name}+{key_id.hex()}+{base64.b64encode(raw).decode()}"


def leaf_hash(canonical: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + canonical).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_inclusion(index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2, step by step."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: list[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2, step by step."""
    if first == second:
        return not proof and first_root == second_root
    if first == 0 or first > second or not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:  # an exact power of two
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == first_root and sr == second_root


def jcs(value: Any) -> bytes:
    """RFC 8785 for the values entries may hold (no floats; keys sort the same as UTF-16)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def independent_verify(bundle: dict[str, Any], verifier_key: str) -> tuple[int, bytes]:
    """Check an evidence bundle (SPEC §2.4) with nothing but the verifier key.

    Returns the checkpoint's (size, root); raises Rejected on any failure.
    """
    key = parse_verifier_key(verifier_key)
    size, root = parse_checkpoint(open_signed_note(bundle["checkpoint"], key), key.name)
    if not bundle["entries"]:
        raise Rejected("no entries")
    for item in bundle["entries"]:
        try:
            canonical = base64.b64decode(item["canonical"], validate=True)
            proof = [base64.b64decode(node, validate=True) for node in item["inclusion"]]
        except binascii.Error:
            raise Rejected("bad base64") from None
        if not verify_inclusion(item["index"], size, leaf_hash(canonical), proof, root):
            raise Rejected(f"entry {item['index']}: inclusion proof fails")
        try:
            parsed = json.loads(canonical)
        except ValueError:
            raise Rejected(f"entry {item['index']}: canonical bytes are not JSON") from None
        if jcs(parsed) != canonical:
            raise Rejected(f"entry {item['index']}: not in canonical form")
        if parsed != item["entry"] or parsed["seq"] != item["index"]:
            raise Rejected(f"entry {item['index']}: the shown entry differs from the canonical")
    return size, root


def flip_canonical_byte(bundle: dict[str, Any], entry: int = 0, offset: int = 10) -> dict[str, Any]:
    tampered = json.loads(json.dumps(bundle))
    raw = bytearray(base64.b64decode(tampered["entries"][entry]["canonical"]))
    raw[offset] ^= 0x01
    tampered["entries"][entry]["canonical"] = base64.b64encode(bytes(raw)).decode()
    return tampered


# --- tlog-tiles -----------------------------------------------------------------------------

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT


def tile_index_path(index: int) -> str:
    """N in three-digit groups, all but the last prefixed with x: 1234067 -> x001/x234/067."""
    text = f"{index % 1000:03d}"
    index //= 1000
    while index:
        text = f"x{index % 1000:03d}/{text}"
        index //= 1000
    return text


def tile_path(level: int | str, index: int, width: int) -> str:
    """`tile/<L>/<N>[.p/<W>]`, with L = "entries" for entry bundles."""
    suffix = "" if width == TILE_WIDTH else f".p/{width}"
    return f"tile/{level}/{tile_index_path(index)}{suffix}"


def split_entry_bundle(data: bytes) -> list[bytes]:
    """An entry bundle: each entry as a big-endian uint16 length, then its bytes."""
    entries = []
    while data:
        if len(data) < 2:
            raise Rejected("truncated entry bundle")
        size = int.from_bytes(data[:2], "big")
        if len(data) < 2 + size:
            raise Rejected("truncated entry in bundle")
        entries.append(data[2 : 2 + size])
        data = data[2 + size :]
    return entries


def merkle_root(hashes: list[bytes]) -> bytes:
    """RFC 9162 MTH over already-hashed leaves (split at the largest power of two < n)."""
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    split = 1 << ((len(hashes) - 1).bit_length() - 1)
    return node_hash(merkle_root(hashes[:split]), merkle_root(hashes[split:]))
