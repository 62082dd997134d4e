"""Subjects as the log knows them: a random reference and a salted commitment.

The log never holds a platform's raw subject id. The mapping (id, ref, salt)
lives in the mutable `subjects` table; deleting it (erasure) leaves entries
that nothing in the database can link back to the person, while `verify`
can still check every surviving mapping against its commitment.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
import unicodedata

from iso3166 import countries_by_alpha2

from ledger.errors import InvalidInput
from ledger.tlog.notes import b64

MAX_SUBJECT_ID = 256
SALT_BYTES = 32
# The random part of a subject reference (80 bits, 74 of them left random by UUIDv7).
REF_RANDOM_BYTES = 10


def new_subject_ref(random: bytes | None = None) -> str:
    """A new subject reference: a UUIDv7 (RFC 9562 §5.7) in 32 lowercase hex digits.

    74 random bits make it unguessable and unrelated to the id. The leading 48
    bits are the Unix time in milliseconds, which tells nothing the log does not
    (the subject's `subject.registered` entry carries its time), but keeps the
    references created together next to each other in every index keyed by
    them: a bulk import then appends to those B-trees instead of rewriting a
    random page of each for every subject.
    """
    if random is None:
        random = secrets.token_bytes(REF_RANDOM_BYTES)
    elif len(random) != REF_RANDOM_BYTES:
        raise ValueError(f"a subject reference takes {REF_RANDOM_BYTES} random bytes")
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(random)
    # Version 7 in bits 48-51, the RFC 9562 variant (0b10) in bits 64-65.
    value = value & ~(0xF << 76) | 0x7 << 76
    value = value & ~(0x3 << 62) | 0x2 << 62
    return f"{value:032x}"


def new_salt() -> bytes:
    return secrets.token_bytes(SALT_BYTES)


class RandomPool:
    """The OS's random bytes drawn 64 KB at a time, for many new subjects in a row (a
    bulk import): each needs a salt and a reference, two system calls otherwise."""

    __slots__ = ("_at", "_bytes")
    _DRAW = 1 << 16

    def __init__(self) -> None:
        self._bytes = b""
        self._at = 0

    def take(self, count: int) -> bytes:
        if self._at + count > len(self._bytes):
            self._bytes = os.urandom(max(self._DRAW, count))
            self._at = 0
        start = self._at
        self._at += count
        return self._bytes[start : self._at]

    def ref_and_salt(self) -> tuple[str, bytes]:
        return new_subject_ref(self.take(REF_RANDOM_BYTES)), self.take(SALT_BYTES)


def commitment(salt: bytes, subject_id: str) -> str:
    """base64(SHA-256(salt ‖ UTF-8 subject id)): binds the ref to the id without revealing it."""
    return b64(hashlib.sha256(salt + subject_id.encode("utf-8")).digest())


def erased_id_hash(secret: bytes, subject_id: str) -> bytes:
    """Keyed hash kept after erasure so that checks for the id answer `erased`."""
    return hmac.new(secret, subject_id.encode("utf-8"), hashlib.sha256).digest()


def validate_subject_id(subject_id: object, *, field: str = "subject_id") -> str:
    if not isinstance(subject_id, str):
        raise InvalidInput("must be a string", field=field)
    if not 1 <= len(subject_id) <= MAX_SUBJECT_ID:
        raise InvalidInput(
            f"must be 1 to {MAX_SUBJECT_ID} characters, got {len(subject_id)}", field=field
        )
    # isprintable() is a fast C check that is True for the ids seen in practice;
    # only ids it rejects (e.g. with a non-breaking space) need the precise one.
    if not subject_id.isprintable() and any(
        unicodedata.category(char) in {"Cc", "Cs"} for char in subject_id
    ):
        raise InvalidInput("must not contain control characters", field=field)
    return subject_id


def validate_jurisdiction(jurisdiction: object, *, field: str = "jurisdiction") -> str | None:
    """An ISO 3166-1 alpha-2 code (any case), or None for unknown."""
    if jurisdiction is None or jurisdiction == "":
        return None
    if not isinstance(jurisdiction, str):
        raise InvalidInput("must be an ISO 3166-1 alpha-2 country code or null", field=field)
    code = jurisdiction.strip().upper()
    if code not in countries_by_alpha2:
        raise InvalidInput(
            f"{jurisdiction!r} is not an ISO 3166-1 alpha-2 country code", field=field
        )
    return code
