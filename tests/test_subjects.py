"""Subject references: random, yet created in time order (RFC 9562 UUIDv7)."""

from __future__ import annotations

import re
import time
import uuid

from ledger.consent.subjects import SALT_BYTES, RandomPool, new_subject_ref


def test_a_reference_is_a_uuid7_in_32_hex_digits() -> None:
    ref = new_subject_ref()
    assert len(ref) == 32
    assert ref == ref.lower()
    parsed = uuid.UUID(hex=ref)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    # Its first 48 bits are the Unix time in milliseconds.
    assert abs(int(ref[:12], 16) - time.time_ns() // 1_000_000) < 60_000


def test_references_are_unique_and_random_within_a_millisecond() -> None:
    refs = [new_subject_ref() for _ in range(20_000)]
    assert len(set(refs)) == len(refs)
    # The 74 random bits differ: no two references share their random tail.
    assert len({ref[13:] for ref in refs}) == len(refs)


def test_references_created_later_sort_later() -> None:
    first = new_subject_ref()
    time.sleep(0.002)
    assert new_subject_ref() > first


def test_a_random_pool_gives_fresh_refs_and_salts() -> None:
    pool = RandomPool()
    pairs = [pool.ref_and_salt() for _ in range(5_000)]  # past one 64 KB draw
    refs = [ref for ref, _ in pairs]
    salts = [salt for _, salt in pairs]
    assert len(set(refs)) == len(refs)
    assert len(set(salts)) == len(salts)
    assert all(len(salt) == SALT_BYTES for salt in salts)
    assert all(re.fullmatch(r"[0-9a-f]{12}7[0-9a-f]{3}[89ab][0-9a-f]{15}", ref) for ref in refs)
