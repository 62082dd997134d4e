"""The signing key: rotation signs with old and new key, and every instance follows the chain."""

from __future__ import annotations

import pytest

from ledger.errors import VerificationError
from ledger.service import ConsentLedger
from ledger.tlog.evidence import verify_bundle
from ledger.tlog.notes import Note, VerifierKey, verify_note
from ledger.verify import verify_ledger
from tests.service.helpers import ACTOR, ALICE, BOB, deny, grant, trusted


def signers_of(note: str) -> int:
    return len(Note.parse(note).signatures)


def test_key_rotation_checkpoint_is_signed_by_old_and_new_key(ledger: ConsentLedger) -> None:
    old = ledger.verifier_key()

    rotation = ledger.rotate_key(actor=ACTOR)

    new = ledger.verifier_key()
    assert new != old
    assert [(e.kind, e.data["verifier_key"]) for e in rotation.entries] == [
        ("key.added", new),
        ("key.retired", old),
    ]
    assert signers_of(rotation.checkpoint) == 2
    verify_note(rotation.checkpoint, [VerifierKey.parse(old)])
    verify_note(rotation.checkpoint, [VerifierKey.parse(new)])

    ledger.register_subject(ALICE, actor=ACTOR)
    later = ledger.record_consents(ALICE, [grant()], actor=ACTOR)

    assert signers_of(later.checkpoint) == 1
    verify_note(later.checkpoint, [VerifierKey.parse(new)])
    with pytest.raises(VerificationError, match="no signature by a known key"):
        verify_note(later.checkpoint, [VerifierKey.parse(old)])
    verify_ledger(ledger.engine, trusted_key=VerifierKey.parse(old))


def test_receipt_after_rotation_verifies_under_the_new_key_only(ledger: ConsentLedger) -> None:
    old = trusted(ledger)
    ledger.register_subject(ALICE, actor=ACTOR)
    earlier = ledger.record_consents(ALICE, [grant()], actor=ACTOR)
    ledger.rotate_key(actor=ACTOR)

    receipt = ledger.receipt(ledger.record_consents(ALICE, [deny()], actor=ACTOR))

    assert receipt.verifier_key == ledger.verifier_key()
    verify_bundle(receipt, trusted(ledger))
    with pytest.raises(VerificationError, match="no signature by a known key"):
        verify_bundle(receipt, old)
    # Receipts issued before the rotation still prove what they proved.
    verify_bundle(ledger.receipt(earlier), old)


def test_rotations_chain_and_survive_reopening_the_ledger(ledger: ConsentLedger) -> None:
    ledger.rotate_key(actor=ACTOR)
    ledger.register_subject(ALICE, actor=ACTOR)
    ledger.rotate_key(actor=ACTOR)
    reopened = ConsentLedger(ledger.settings)
    try:
        sealed = reopened.record_consents(ALICE, [grant()], actor=ACTOR)
        verify_note(sealed.checkpoint, trusted(reopened))
        report = verify_ledger(reopened.engine)
    finally:
        reopened.close()
    assert report.entries == sealed.tree_size


def test_writes_after_another_instance_rotated_the_key_are_signed_by_the_new_key(
    ledger: ConsentLedger,
) -> None:
    ledger.register_subject(ALICE, actor=ACTOR)  # this instance now holds the key
    other = ConsentLedger(ledger.settings)
    try:
        other.rotate_key(actor=ACTOR)
    finally:
        other.close()

    sealed = ledger.register_subject(BOB, actor=ACTOR)

    assert sealed is not None
    verify_note(sealed.checkpoint, trusted(ledger))
    verify_ledger(ledger.engine)
