"""Subject references: random, yet created in time order (RFC 9562 UUIDv7)."""

from __future__ import annotations

import time
import uuid

from ledger.subjects import new_subject_ref


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
