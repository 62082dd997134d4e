"""The client against a real ledger's recorded answers: what verifies, and what is refused."""

from __future__ import annotations

import base64
import copy
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from session import RecordedLedger, run

from consent_ledger_client import ConsentLedgerClient, VerificationError
from consent_ledger_client._kernel.errors import VerificationError as KernelVerificationError
from consent_ledger_client._kernel.tlog.notes import Checkpoint, Note

MakeClient = Callable[..., ConsentLedgerClient]
RECORD_USER_1 = "POST /v1/subjects/user-1/consents"
RECORD_USER_2 = "POST /v1/subjects/user-2/consents"


def flip(text: str, position: int = 0) -> str:
    """`text` (base64) with one bit of its decoded byte at `position` flipped."""
    raw = bytearray(base64.b64decode(text))
    raw[position] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def test_a_session_verifies_end_to_end_and_keeps_the_trusted_checkpoint(
    make_client: MakeClient, ledger: RecordedLedger, tmp_path: Path
) -> None:
    store = tmp_path / "trust" / "ledger.checkpoint"
    client = make_client(trust_store=store)

    outcome = run(client)

    tokens = [receipt.token for receipt in outcome.receipts.values()]
    assert tokens == [3, 4, 5, 8]
    assert all(receipt.status == 201 and receipt.changed for receipt in outcome.receipts.values())
    # Every newer checkpoint came with a consistency proof from the one trusted before;
    # the last receipt needed one across writes this client never saw (sizes 6 and 7).
    assert ledger.proofs_asked() == [(3, 4), (4, 5), (5, 8)]
    assert (outcome.check["eligible"], outcome.check["reason"]) == (True, "consent")
    assert [post["text"] for post in outcome.kept] == ["first", "third"]
    assert (outcome.filtered.checked_at, dict(outcome.filtered.dropped)) == (8, {"refused": 1})
    assert [entry["kind"] for entry in outcome.history.entries] == [
        "subject.registered",
        "consent.recorded",
    ]
    assert outcome.checkpoint.size == 8
    assert client.trusted_checkpoint == outcome.checkpoint
    assert store.read_text(encoding="utf-8") == outcome.filtered.checkpoint_note

    # A restarted process starts from the stored checkpoint: an older receipt must
    # then be proven a prefix of it.
    restarted = make_client(trust_store=store)
    assert restarted.trusted_checkpoint == outcome.checkpoint
    again = restarted.verify_bundle(outcome.receipts["user-1"].document)
    assert again.checkpoint.size == 3
    assert ledger.proofs_asked()[-1] == (3, 8)
    assert restarted.trusted_checkpoint == outcome.checkpoint


@pytest.mark.parametrize(
    "forge",
    ["canonical", "inclusion", "signature", "tree-size", "readable-entry", "index"],
)
def test_forged_receipts_are_refused(
    make_client: MakeClient, answer: Callable[[str], Any], forge: str
) -> None:
    document = copy.deepcopy(answer(RECORD_USER_2)["receipt"])
    make_client(verify_consistency=False).verify_bundle(document)  # genuine: verifies
    entry = document["entries"][0]
    if forge == "canonical":
        canonical = base64.b64decode(entry["canonical"]).replace(b"denied", b"denier")
        entry["canonical"] = base64.b64encode(canonical).decode()
    elif forge == "inclusion":
        entry["inclusion"][0] = flip(entry["inclusion"][0], 5)
    elif forge == "signature":
        body, _, signature = document["checkpoint"].rstrip("\n").rpartition(" ")
        document["checkpoint"] = f"{body} {flip(signature, 20)}\n"
    elif forge == "tree-size":
        lines = document["checkpoint"].split("\n")
        lines[1] = str(int(lines[1]) - 1)
        document["checkpoint"] = "\n".join(lines)
    elif forge == "readable-entry":
        entry["entry"]["data"]["decision"] = "granted"
    elif forge == "index":
        entry["index"] -= 1
    with pytest.raises(VerificationError) as refused:
        make_client(verify_consistency=False).verify_bundle(document)
    assert isinstance(refused.value, KernelVerificationError)
    assert refused.value.document is document


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("flip", "differs from its canonical bytes"),
        ("swap", "not decision 0 as asked"),
        ("empty", "holds 0 entries"),
    ],
)
def test_a_tampered_write_answer_fails_the_write_call(
    make_client: MakeClient,
    ledger: RecordedLedger,
    answer: Callable[[str], Any],
    how: str,
    message: str,
) -> None:
    other = answer(RECORD_USER_2)

    def tamper(key: str, document: Any) -> Any:
        if not key.startswith(RECORD_USER_1):
            return None
        if how == "flip":
            entry = document["receipt"]["entries"][0]
            entry["canonical"] = flip(entry["canonical"], 30)
        elif how == "swap":  # a genuine receipt, but of another write
            return other
        elif how == "empty":  # a genuine checkpoint that proves nothing about the write
            document["receipt"]["entries"] = []
        return document

    ledger.edit = tamper
    client = make_client(verify_consistency=False)
    with pytest.raises(VerificationError, match=message) as refused:
        client.record("user-1", [{"category": "content.public", "decision": "granted"}])
    assert refused.value.document is not None  # the write happened; here is what came back


@pytest.mark.parametrize(
    ("receipt", "message"),
    [
        (RECORD_USER_1, "two different roots for tree size 5"),  # same size as the forgery
        (RECORD_USER_2, "not an extension of the log of size 5"),  # proof 5 -> 8 fails
    ],
)
def test_a_log_inconsistent_with_the_trusted_checkpoint_is_refused(
    make_client: MakeClient,
    recording: dict[str, Any],
    answer: Callable[[str], Any],
    tmp_path: Path,
    receipt: str,
    message: str,
) -> None:
    store = tmp_path / "ledger.checkpoint"
    store.write_text(recording["forged_checkpoint"], encoding="utf-8")
    client = make_client(trust_store=store)
    forged = client.trusted_checkpoint
    assert forged is not None
    assert forged.root == hashlib.sha256(b"another history").digest()

    with pytest.raises(VerificationError, match=message) as refused:
        client.verify_bundle(answer(receipt)["receipt"])
    assert "fork" in str(refused.value)
    assert client.trusted_checkpoint == forged  # nothing inconsistent was trusted
    assert store.read_text(encoding="utf-8") == recording["forged_checkpoint"]


def test_a_checkpoint_signed_by_another_key_is_refused(
    make_client: MakeClient,
    recording: dict[str, Any],
    answer: Callable[[str], Any],
    tmp_path: Path,
) -> None:
    store = tmp_path / "ledger.checkpoint"
    store.write_text(recording["impostor_checkpoint"], encoding="utf-8")
    with pytest.raises(VerificationError, match="trust store"):
        make_client(trust_store=store)

    # Trusting the impostor's key instead, the genuine receipts fail, naming the
    # key the server says it signed with (a key rotation would look like this).
    stranger = make_client(verifier_key=recording["impostor_key"], verify_consistency=False)
    with pytest.raises(VerificationError, match="no signature by a known key") as refused:
        stranger.verify_bundle(answer(RECORD_USER_1)["receipt"])
    assert recording["verifier_key"] in str(refused.value)
    assert refused.value.subject == "checkpoint"


def test_the_trust_store_is_a_signed_checkpoint_note(
    make_client: MakeClient, answer: Callable[[str], Any], tmp_path: Path
) -> None:
    store = tmp_path / "ledger.checkpoint"
    receipt = answer(RECORD_USER_1)["receipt"]
    make_client(trust_store=store).verify_bundle(receipt)
    text = store.read_text(encoding="utf-8")
    assert text == receipt["checkpoint"]
    assert Checkpoint.parse_body(Note.parse(text).text).size == 5
