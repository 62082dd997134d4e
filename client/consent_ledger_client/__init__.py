"""A Python client for platforms using a consent-ledger over HTTP.

    from consent_ledger_client import ConsentLedgerClient

    with ConsentLedgerClient(
        "https://ledger.example.com",
        api_key=os.environ["CONSENT_LEDGER_API_KEY"],
        verifier_key=open("ledger.vkey").read(),
        trust_store=Path("/var/lib/trainer/ledger.checkpoint"),
    ) as ledger:
        receipt = ledger.record("user-42", [{"category": "content.public", "decision": "granted"}])
        ledger.check("user-42", "content.public", at_least_as_fresh=receipt.token)
        kept = ledger.filter(read_jsonl("posts.jsonl"), category="content.public")
        write_jsonl("train.jsonl", kept)
        print(kept.checked_at, kept.kept, dict(kept.dropped))

        # Record the build as it is filtered, then act on what the ledger asks back.
        kept = ledger.filter(read_jsonl("posts.jsonl"), record="posts-train@2")
        write_jsonl("train-2.jsonl", kept)
        print(kept.recorded.seq, kept.recorded.records)
        due = [o["record_id"] for o in ledger.obligations("posts-train", status="open")]
        ledger.purge("posts-train", "1", due)

        # Follow what changes, each event proven against the signed log.
        for event in ledger.changes(after=cursor.load()):
            invalidate(event.subject_id, event.effect)
            cursor.save(event.cursor)

Every receipt and checkpoint is verified with `ledger.tlog.notes` and
`ledger.tlog.merkle`, the same code the ledger and its auditors use: the
client carries a generated copy of it in `consent_ledger_client._kernel`
(`python client/generate_kernel.py`; a test keeps the copy identical).
"""

from consent_ledger_client.changes import ChangeEvent, ChangeFeed, VerifiedChanges, verify_changes
from consent_ledger_client.core import ConsentLedgerClient, FilterResult, Receipt, VerifiedBundle
from consent_ledger_client.datasets import (
    BuildRecording,
    MemberProof,
    PurgeResult,
    RecordedBuild,
    verify_member_proof,
)
from consent_ledger_client.errors import (
    ApiError,
    ClientError,
    InvalidRecord,
    MissingScope,
    ProtocolError,
    TransportError,
    VerificationError,
)
from consent_ledger_client.trust import TrustedLog
from consent_ledger_client.webhooks import (
    WebhookDelivery,
    WebhookReceiver,
    WebhookSignatureError,
)

__all__ = [
    "ApiError",
    "BuildRecording",
    "ChangeEvent",
    "ChangeFeed",
    "ClientError",
    "ConsentLedgerClient",
    "FilterResult",
    "InvalidRecord",
    "MemberProof",
    "MissingScope",
    "ProtocolError",
    "PurgeResult",
    "Receipt",
    "RecordedBuild",
    "TransportError",
    "TrustedLog",
    "VerificationError",
    "VerifiedBundle",
    "VerifiedChanges",
    "WebhookDelivery",
    "WebhookReceiver",
    "WebhookSignatureError",
    "verify_changes",
    "verify_member_proof",
]
