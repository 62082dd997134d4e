"""The read model: receipts and subject histories are evidence bundles that verify offline."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from ledger.errors import VerificationError
from ledger.service import ConsentLedger
from ledger.service.keys import SigningKey
from ledger.tlog.evidence import EvidenceBundle, verify_bundle
from tests.conftest import TEST_ORIGIN
from tests.service.helpers import (
    ACTOR,
    ALICE,
    BOB,
    all_entries,
    deny,
    grant,
    policy_version,
    ref_of,
    trusted,
)


def flip(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1 :]


def test_receipt_verifies_under_the_ledger_key(ledger: ConsentLedger) -> None:
    ledger.register_subject(ALICE, jurisdiction="US", actor=ACTOR)
    sealed = ledger.record_consents(ALICE, [grant(), deny("profile")], actor=ACTOR)

    bundle = ledger.receipt(sealed)

    assert bundle.verifier_key == ledger.verifier_key()
    assert bundle.checkpoint == sealed.checkpoint
    assert [item.index for item in bundle.entries] == [entry.seq for entry in sealed.entries]
    checkpoint = verify_bundle(bundle, trusted(ledger))
    assert (checkpoint.origin, checkpoint.size) == (TEST_ORIGIN, sealed.tree_size)
    # What an API client receives, parsed back, verifies just the same.
    verify_bundle(EvidenceBundle.from_json(bundle.to_json()), trusted(ledger))


def test_receipt_does_not_verify_under_another_key(ledger: ConsentLedger) -> None:
    ledger.register_subject(ALICE, actor=ACTOR)
    sealed = ledger.record_consents(ALICE, [grant()], actor=ACTOR)
    stranger = SigningKey.generate(TEST_ORIGIN).verifier_key

    with pytest.raises(VerificationError, match="no signature by a known key"):
        verify_bundle(ledger.receipt(sealed), [stranger])


@pytest.mark.parametrize(
    ("locate", "message"),
    [
        pytest.param(
            lambda canonical: canonical.index(b'"granted"') + 1,
            r"entry \d+: inclusion proof fails",
            id="value-byte",
        ),
        pytest.param(lambda canonical: 0, r"entry \d+: ", id="structure-byte"),
    ],
)
def test_receipt_with_a_flipped_canonical_byte_does_not_verify(
    ledger: ConsentLedger, locate: Callable[[bytes], int], message: str
) -> None:
    ledger.register_subject(ALICE, actor=ACTOR)
    bundle = ledger.receipt(ledger.record_consents(ALICE, [grant()], actor=ACTOR))
    (item,) = bundle.entries
    forged = dataclasses.replace(
        bundle,
        entries=(
            dataclasses.replace(item, canonical=flip(item.canonical, locate(item.canonical))),
        ),
    )

    with pytest.raises(VerificationError, match=message):
        verify_bundle(forged, trusted(ledger))


def test_subject_history_holds_exactly_the_subjects_entries(ledger: ConsentLedger) -> None:
    ledger.register_subject(ALICE, jurisdiction="US", actor=ACTOR)
    ledger.register_subject(BOB, jurisdiction="DE", actor=ACTOR)
    ledger.record_consents(ALICE, [grant(), deny("profile")], actor=ACTOR)
    ledger.record_consents(BOB, [grant()], actor=ACTOR)
    ledger.register_subject(ALICE, jurisdiction="FR", actor=ACTOR)
    ledger.publish_policy(policy_version(2), actor=ACTOR)

    bundle = ledger.subject_history(ALICE)

    ref = ref_of(ledger, ALICE)
    expected = [entry.seq for entry in all_entries(ledger) if entry.data.get("subject") == ref]
    assert [item.index for item in bundle.entries] == expected
    assert [item.entry["kind"] for item in bundle.entries] == [
        "subject.registered",
        "consent.recorded",
        "consent.recorded",
        "subject.updated",
    ]
    checkpoint = verify_bundle(bundle, trusted(ledger))
    assert checkpoint.size == ledger.tree_size()
