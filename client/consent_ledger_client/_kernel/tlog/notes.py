# Generated from ledger/tlog/notes.py by `python client/generate_kernel.py`; do not edit.
"""C2SP signed notes and tlog checkpoints, signed with Ed25519.

Checkpoints leave the ledger as signed notes so that tools nobody here wrote
(Go's `golang.org/x/mod/sumdb/note`, witnesses, Sigsum, Sigstore) can check
them, and so that this module can check theirs. The formats are:

* signed note (https://c2sp.org/signed-note): the text, which ends in a
  newline, then a blank line, then one or more signature lines
  ``— <name> <base64(key ID || signature)>``;
* tlog checkpoint (https://c2sp.org/tlog-checkpoint): a note whose text is
  ``<origin>\\n<tree size>\\n<base64 root hash>\\n``. The ledger writes no
  extension lines and refuses them when reading, so a checkpoint body has
  exactly one serialisation;
* verifier key: ``<name>+<8 hex digits of key ID>+<base64(0x01 || public key)>``.

Parsing is strict, and failures name what is wrong: a note that parses in a
lenient reader but not in Go's would let two auditors disagree about the same
bytes.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NewType, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from consent_ledger_client._kernel.errors import InvalidInput, VerificationError

__all__ = [
    "ALG_ED25519",
    "MAX_SIGNATURES",
    "B64Str",
    "Checkpoint",
    "KeyID",
    "Note",
    "NoteSignature",
    "NoteSigner",
    "VerifierKey",
    "b64",
    "key_id",
    "open_checkpoint",
    "parse_go_signer_key",
    "sign_checkpoint",
    "sign_note",
    "unb64",
    "validate_key_name",
    "validate_origin",
    "verify_note",
    "verify_note_signatures",
]

B64Str = NewType("B64Str", str)
KeyID = NewType("KeyID", bytes)

ALG_ED25519 = 0x01
# Go's note.Open stops at 100 signatures, so a note with more would be
# rejected there; refusing it here too keeps both readers in agreement.
MAX_SIGNATURES = 100
KEY_ID_SIZE = 4
ED25519_PUBLIC_KEY_SIZE = 32
ED25519_SIGNATURE_SIZE = 64
ROOT_HASH_SIZE = 32  # the ledger's Merkle tree is RFC 6962 with SHA-256
MAX_TREE_SIZE = 2**64 - 1  # tlog-checkpoint sizes are uint64
MAX_ORIGIN_LENGTH = 255

SIGNATURE_PREFIX = "\u2014 "  # EM DASH, space; a hyphen-minus is a different note
GO_SIGNER_PREFIX = "PRIVATE+KEY+"

# `$` would also match before a trailing newline, and `\d` matches non-ASCII
# digits; a tree size is plain ASCII decimal with no leading zeros.
_TREE_SIZE = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_HEX_KEY_ID = re.compile(r"[0-9a-fA-F]{8}", re.ASCII)
# What a key name may not hold: `\s` is exactly the set `str.isspace` accepts.
_NOT_IN_KEY_NAME = re.compile(r"[\s+\x00-\x1f]")
_CONTROL_CHARACTER = re.compile("[\x00-\x09\x0b-\x1f]")


# --- base64 -------------------------------------------------------------------


def b64(data: bytes) -> B64Str:
    """Encode `data` as standard, padded base64 (RFC 4648 section 4)."""
    return B64Str(base64.b64encode(data).decode("ascii"))


def unb64(text: str, *, field: str = "base64") -> bytes:
    """Decode standard padded base64, accepting only the canonical encoding.

    Python's decoder ignores non-zero trailing bits even with
    ``validate=True``; re-encoding and comparing rejects every alternative
    spelling, so one value has exactly one accepted text.
    """
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"not valid base64: {exc}", field=field) from exc
    if b64(data) != text:
        raise InvalidInput("not canonical padded base64", field=field)
    return data


# --- names and keys -----------------------------------------------------------


def validate_key_name(name: str) -> str:
    """Check a signed-note key name: non-empty UTF-8, no spaces, no '+'.

    These are the C2SP rules; a space would end the name early in a signature
    line and a '+' would shift the fields of a verifier key.
    """
    if not isinstance(name, str) or not name:
        raise InvalidInput("key name must be a non-empty string", field="name")
    # Every signature line of every note checks a name: one regex scan for
    # the common case, the checks below only to say what is wrong.
    if _NOT_IN_KEY_NAME.search(name) is None:
        _require_utf8(name, field="name")
        return name
    if any(char.isspace() for char in name):
        raise InvalidInput("key name must not contain whitespace", field="name")
    if "+" in name:
        raise InvalidInput("key name must not contain '+'", field="name")
    if _control_character(name) is not None:
        raise InvalidInput("key name must not contain control characters", field="name")
    _require_utf8(name, field="name")
    return name


def validate_origin(origin: str) -> str:
    """Check a log origin: a printable key name of at most 255 characters.

    The origin is also the name of the log's signing key, so it has to obey
    the key-name rules as well as the checkpoint's first-line rules.
    """
    if not isinstance(origin, str) or not origin:
        raise InvalidInput("origin must be a non-empty string", field="origin")
    if len(origin) > MAX_ORIGIN_LENGTH:
        raise InvalidInput(
            f"origin is {len(origin)} characters, more than {MAX_ORIGIN_LENGTH}", field="origin"
        )
    if any(char.isspace() for char in origin):
        raise InvalidInput("origin must not contain whitespace", field="origin")
    if not origin.isprintable():
        raise InvalidInput("origin must be printable", field="origin")
    if "+" in origin:
        raise InvalidInput("origin must not contain '+'", field="origin")
    _require_utf8(origin, field="origin")
    return origin


def _require_utf8(text: str, *, field: str) -> None:
    # A str can still hold lone surrogates (from surrogateescape decoding),
    # which have no UTF-8 encoding and so cannot be signed or sent.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput("not valid UTF-8", field=field) from exc


def key_id(name: str, public_key: bytes) -> KeyID:
    """The 4-byte key ID of an Ed25519 key: SHA-256(name || 0x0A || 0x01 || key)[:4]."""
    if len(public_key) != ED25519_PUBLIC_KEY_SIZE:
        raise InvalidInput(
            f"Ed25519 public key must be {ED25519_PUBLIC_KEY_SIZE} bytes, not {len(public_key)}",
            field="public_key",
        )
    digest = hashlib.sha256(
        name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + public_key
    ).digest()
    return KeyID(digest[:KEY_ID_SIZE])


@dataclass(frozen=True)
class VerifierKey:
    """A public key that checks note signatures, with the name it signs under."""

    name: str
    key_id: KeyID
    public_key: bytes  # raw 32-byte Ed25519 public key

    def __post_init__(self) -> None:
        validate_key_name(self.name)
        expected = key_id(self.name, self.public_key)
        if self.key_id != expected:
            raise InvalidInput(
                f"key ID {self.key_id.hex()} does not match the name and key "
                f"(expected {expected.hex()})",
                field="verifier_key",
            )

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        """Parse ``<name>+<hex key ID>+<base64(0x01 || public key)>``.

        Only the first two '+' separate fields: the base64 alphabet has its own.
        Hex digits may be in either case, as Go accepts both; `str()` writes
        lowercase.
        """
        field = "verifier_key"
        if not isinstance(text, str):
            raise InvalidInput("verifier key must be a string", field=field)
        parts = text.split("+", 2)
        if len(parts) != 3:
            raise InvalidInput("expected <name>+<hex key ID>+<base64 key>", field=field)
        name, hex_id, key_b64 = parts
        try:
            validate_key_name(name)
        except InvalidInput as exc:
            raise InvalidInput(f"bad name: {exc.args[0]}", field=field) from exc
        if not _HEX_KEY_ID.fullmatch(hex_id):
            raise InvalidInput("key ID must be exactly 8 hex digits", field=field)
        try:
            raw = unb64(key_b64, field=field)
        except InvalidInput as exc:
            raise InvalidInput(f"bad key: {exc.args[0]}", field=field) from exc
        if not raw or raw[0] != ALG_ED25519:
            raise InvalidInput(
                "unsupported key type (only Ed25519, type 0x01, is supported)", field=field
            )
        public_key = raw[1:]
        if len(public_key) != ED25519_PUBLIC_KEY_SIZE:
            raise InvalidInput(
                f"Ed25519 key must be {ED25519_PUBLIC_KEY_SIZE} bytes, not {len(public_key)}",
                field=field,
            )
        return cls(name=name, key_id=KeyID(bytes.fromhex(hex_id)), public_key=public_key)

    def __str__(self) -> str:
        return f"{self.name}+{self.key_id.hex()}+{b64(bytes([ALG_ED25519]) + self.public_key)}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether `signature` is this key's Ed25519 signature of `message`."""
        if len(signature) != ED25519_SIGNATURE_SIZE:
            return False
        try:
            _public_key(self.public_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


@functools.lru_cache(maxsize=64)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    # Loading a key costs as much as a verification; verify checks thousands
    # of checkpoints under the same few keys.
    return Ed25519PublicKey.from_public_bytes(raw)


class NoteSigner(Protocol):
    """Anything that can sign notes: a name, its key ID, its public half, `sign`.

    `ledger.service.keys.SigningKey` is the production implementation; the protocol
    keeps this module free of key storage.
    """

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> KeyID: ...

    @property
    def verifier_key(self) -> VerifierKey: ...

    def sign(self, message: bytes) -> bytes: ...


def parse_go_signer_key(text: str) -> tuple[VerifierKey, Ed25519PrivateKey]:
    """Parse Go's signer key format ``PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>``.

    This lets a key made by `golang.org/x/mod/sumdb/note.GenerateKey` sign
    ledger checkpoints. The key ID is checked against the derived public key,
    so a mistyped or mismatched key fails here instead of signing notes
    nobody can verify.
    """
    field = "signer_key"
    if not isinstance(text, str) or not text.startswith(GO_SIGNER_PREFIX):
        raise InvalidInput(f"signer key must start with {GO_SIGNER_PREFIX!r}", field=field)
    parts = text[len(GO_SIGNER_PREFIX) :].split("+", 2)
    if len(parts) != 3:
        raise InvalidInput("expected PRIVATE+KEY+<name>+<hex key ID>+<base64 seed>", field=field)
    name, hex_id, seed_b64 = parts
    validate_key_name(name)
    if not _HEX_KEY_ID.fullmatch(hex_id):
        raise InvalidInput("key ID must be exactly 8 hex digits", field=field)
    raw = unb64(seed_b64, field=field)
    if len(raw) != 1 + 32 or raw[0] != ALG_ED25519:
        raise InvalidInput("expected an Ed25519 (type 0x01) 32-byte seed", field=field)
    private_key = Ed25519PrivateKey.from_private_bytes(raw[1:])
    public_key = private_key.public_key().public_bytes_raw()
    if key_id(name, public_key) != bytes.fromhex(hex_id):
        raise InvalidInput("key ID does not match the private key", field=field)
    return VerifierKey(name, KeyID(bytes.fromhex(hex_id)), public_key), private_key


# --- signed notes -------------------------------------------------------------


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: who claims to have signed, and the signature bytes.

    `signature` excludes the key ID. Its length is not checked here because
    signatures from other algorithms (e.g. witness cosignatures) are
    legitimately different lengths and are carried along unverified.
    """

    name: str
    key_id: KeyID
    signature: bytes

    def __post_init__(self) -> None:
        validate_key_name(self.name)
        if len(self.key_id) != KEY_ID_SIZE:
            raise InvalidInput(f"key ID must be {KEY_ID_SIZE} bytes", field="key_id")
        if not self.signature:
            raise InvalidInput("signature must not be empty", field="signature")

    def line(self) -> str:
        """The signature line, with its final newline."""
        return f"{SIGNATURE_PREFIX}{self.name} {b64(self.key_id + self.signature)}\n"


@dataclass(frozen=True)
class Note:
    """A parsed (not yet verified) signed note: its text and signature lines, in order."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def __post_init__(self) -> None:
        _check_text(self.text)
        if not self.signatures:
            raise InvalidInput("a note needs at least one signature", field="signatures")
        if len(self.signatures) > MAX_SIGNATURES:
            raise InvalidInput(
                f"a note may have at most {MAX_SIGNATURES} signatures", field="signatures"
            )

    @classmethod
    def parse(cls, note: str) -> Note:
        """Split a signed note into text and signatures, rejecting anything malformed.

        Raises `VerificationError` (subject ``"signed note"``): a note is always
        untrusted input.
        """
        return _parse_note(note, subject="signed note")

    def __str__(self) -> str:
        return self.text + "\n" + "".join(sig.line() for sig in self.signatures)


def _check_text(text: str) -> None:
    # The same rules as Go's note.Open applies to the whole note: signing text
    # that Open would reject would produce a note nobody else can read.
    if not isinstance(text, str) or not text:
        raise InvalidInput("note text must be a non-empty string", field="text")
    if not text.endswith("\n"):
        raise InvalidInput("note text must end with a newline", field="text")
    _require_utf8(text, field="text")
    bad = _control_character(text)
    if bad is not None:
        raise InvalidInput(f"note text contains control character U+{ord(bad):04X}", field="text")


def _control_character(text: str) -> str | None:
    """The first character below U+0020 other than a newline, if any."""
    found = _CONTROL_CHARACTER.search(text)
    return None if found is None else found.group()


def _parse_note(note: str, *, subject: str) -> Note:
    def malformed(reason: str) -> VerificationError:
        return VerificationError(f"malformed note: {reason}", subject=subject)

    if not isinstance(note, str):
        raise malformed("not a string")
    try:
        note.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise malformed("not valid UTF-8") from exc
    bad = _control_character(note)
    if bad is not None:
        raise malformed(f"contains control character U+{ord(bad):04X}")
    # The last blank line separates text from signatures: the text itself may
    # contain blank lines, signature lines never do.
    split = note.rfind("\n\n")
    if split < 0:
        raise malformed("no blank line before the signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block:
        raise malformed("no signature lines")
    if not block.endswith("\n"):
        raise malformed("last signature line does not end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise malformed(f"more than {MAX_SIGNATURES} signatures")
    signatures = []
    for number, line in enumerate(lines, start=1):
        where = f"signature line {number}"
        if not line.startswith(SIGNATURE_PREFIX):
            raise malformed(f"{where} does not start with an em dash and a space")
        name, space, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
        if not space or not encoded:
            raise malformed(f"{where} has no signature after the name")
        try:
            validate_key_name(name)
            raw = unb64(encoded, field=where)
        except InvalidInput as exc:
            raise malformed(f"{where}: {exc.args[0]}") from exc
        if len(raw) <= KEY_ID_SIZE:
            raise malformed(f"{where}: signature is only {len(raw)} bytes")
        signatures.append(NoteSignature(name, KeyID(raw[:KEY_ID_SIZE]), raw[KEY_ID_SIZE:]))
    return Note(text=text, signatures=tuple(signatures))


def sign_note(text: str, signers: Sequence[NoteSigner]) -> str:
    """Sign `text` (which must end in a newline) with every signer, in order."""
    _check_text(text)
    if not signers:
        raise InvalidInput("at least one signer is needed", field="signers")
    if len(signers) > MAX_SIGNATURES:
        raise InvalidInput(f"at most {MAX_SIGNATURES} signers", field="signers")
    message = text.encode("utf-8")
    signatures = []
    for signer in signers:
        signature = signer.sign(message)
        if len(signature) != ED25519_SIGNATURE_SIZE:
            raise InvalidInput(
                f"signer {signer.name} returned a {len(signature)}-byte signature",
                field="signers",
            )
        signatures.append(NoteSignature(signer.name, signer.key_id, signature))
    return str(Note(text=text, signatures=tuple(signatures)))


def verify_note(note: str, keys: Sequence[VerifierKey]) -> tuple[Note, list[VerifierKey]]:
    """Parse `note` and check its signatures against `keys`.

    Returns the note and the keys (from `keys`, in that order) that signed it.
    Signatures whose name and key ID match no key are ignored, as C2SP asks, so
    cosignatures from witnesses do not get in the way. A signature that
    matches a key but does not verify is an error, even when another one
    verifies: it means the note was tampered with or the key was misused.
    """
    return _verify(note, keys, subject="signed note")


def verify_note_signatures(note: Note, keys: Sequence[VerifierKey]) -> list[VerifierKey]:
    """Check the signatures of a note parsed earlier, as `verify_note` does.

    For a verifier that checks one note against several sets of keys (a key
    rotation needs the old and the new key): the note is parsed once.
    """
    return _check_signatures(note, _known_keys(keys), subject="signed note")


def _verify(
    note: str, keys: Sequence[VerifierKey], *, subject: str
) -> tuple[Note, list[VerifierKey]]:
    known = _known_keys(keys)
    parsed = _parse_note(note, subject=subject)
    return parsed, _check_signatures(parsed, known, subject=subject)


def _known_keys(keys: Sequence[VerifierKey]) -> dict[tuple[str, bytes], VerifierKey]:
    known: dict[tuple[str, bytes], VerifierKey] = {}
    for key in keys:
        slot = (key.name, bytes(key.key_id))
        if slot in known and known[slot] != key:
            # Two different keys behind one name and ID means the trusted key
            # list itself is wrong; guessing which one is meant is unsafe.
            raise InvalidInput(
                f"ambiguous verifier keys: two keys named {key.name} with ID {key.key_id.hex()}",
                field="keys",
            )
        known[slot] = key
    return known


def _check_signatures(
    parsed: Note, known: dict[tuple[str, bytes], VerifierKey], *, subject: str
) -> list[VerifierKey]:
    message = parsed.text.encode("utf-8")
    verified: set[tuple[str, bytes]] = set()
    for number, signature in enumerate(parsed.signatures, start=1):
        slot = (signature.name, bytes(signature.key_id))
        verifier = known.get(slot)
        if verifier is None:
            continue
        if not verifier.verify(message, signature.signature):
            raise VerificationError(
                f"signature line {number} by {signature.name}+{signature.key_id.hex()} "
                "does not verify",
                subject=subject,
            )
        verified.add(slot)
    if not verified:
        claimed = ", ".join(f"{s.name}+{s.key_id.hex()}" for s in parsed.signatures)
        trusted = ", ".join(f"{k.name}+{k.key_id.hex()}" for k in known.values()) or "none"
        raise VerificationError(
            f"no signature by a known key (signed by {claimed}; known keys: {trusted})",
            subject=subject,
        )
    return [key for slot, key in known.items() if slot in verified]


# --- checkpoints --------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A tlog checkpoint: the log's origin, its tree size and its root hash.

    The origin is only required to be a non-empty line here, so that other
    logs' checkpoints (sum.golang.org's origin is ``go.sum database tree``)
    can be read; `validate_origin` holds the ledger's own, stricter, rule.
    """

    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not self.origin:
            raise InvalidInput("origin must be a non-empty string", field="origin")
        if "\n" in self.origin or _control_character(self.origin) is not None:
            raise InvalidInput("origin must not contain control characters", field="origin")
        _require_utf8(self.origin, field="origin")
        # bool is an int subclass; True is not a tree size.
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise InvalidInput("tree size must be an integer", field="size")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise InvalidInput("tree size must be between 0 and 2**64 - 1", field="size")
        if not isinstance(self.root, bytes) or len(self.root) != ROOT_HASH_SIZE:
            raise InvalidInput(f"root hash must be {ROOT_HASH_SIZE} bytes", field="root")

    def body(self) -> str:
        """The note text: ``<origin>\\n<size>\\n<base64 root>\\n``."""
        return f"{self.origin}\n{self.size}\n{b64(self.root)}\n"

    @classmethod
    def parse_body(cls, text: str) -> Checkpoint:
        """Parse a checkpoint body, accepting only what `body` would write.

        Raises `VerificationError` (subject ``"checkpoint"``), as a body comes
        from outside. Extension lines are refused: the ledger writes none, and
        accepting them would give one checkpoint many valid texts.
        """
        return _parse_body(text, subject="checkpoint")


def _parse_body(text: str, *, subject: str) -> Checkpoint:
    def malformed(reason: str) -> VerificationError:
        return VerificationError(f"malformed checkpoint: {reason}", subject=subject)

    if not isinstance(text, str) or not text.endswith("\n"):
        raise malformed("body must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) != 3:
        raise malformed(f"expected 3 lines (origin, size, root hash), found {len(lines)}")
    origin, size_text, root_text = lines
    if not _TREE_SIZE.fullmatch(size_text):
        raise malformed("tree size must be a decimal number without leading zeros")
    try:
        root = unb64(root_text, field="root hash")
        checkpoint = Checkpoint(origin=origin, size=int(size_text), root=root)
    except InvalidInput as exc:
        raise malformed(str(exc)) from exc
    return checkpoint


def sign_checkpoint(checkpoint: Checkpoint, signers: Sequence[NoteSigner]) -> str:
    """Sign a checkpoint, returning the signed note."""
    return sign_note(checkpoint.body(), signers)


def open_checkpoint(
    note: str, keys: Sequence[VerifierKey], *, origin: str | None = None
) -> Checkpoint:
    """Verify a signed checkpoint and parse its body.

    The signature is checked before the body is parsed, so nothing in an
    unsigned body is trusted. If `origin` is given the checkpoint must be for
    that log: a validly signed checkpoint of another log proves nothing here.
    """
    parsed, _ = _verify(note, keys, subject="checkpoint")
    checkpoint = _parse_body(parsed.text, subject="checkpoint")
    if origin is not None and checkpoint.origin != origin:
        raise VerificationError(
            f"checkpoint is for origin {checkpoint.origin!r}, expected {origin!r}",
            subject="checkpoint",
        )
    return checkpoint
