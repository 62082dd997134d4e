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

Every receipt and checkpoint is verified with `ledger.tlog.notes` and
`ledger.tlog.merkle`, the same code the ledger and its auditors use: the
client carries a generated copy of it in `consent_ledger_client._kernel`
(`python client/generate_kernel.py`; a test keeps the copy identical).
"""

from consent_ledger_client.core import ConsentLedgerClient, FilterResult, Receipt, VerifiedBundle
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

__all__ = [
    "ApiError",
    "ClientError",
    "ConsentLedgerClient",
    "FilterResult",
    "InvalidRecord",
    "MissingScope",
    "ProtocolError",
    "Receipt",
    "TransportError",
    "TrustedLog",
    "VerificationError",
    "VerifiedBundle",
]
