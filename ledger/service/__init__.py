"""The ledger's service layer: `ConsentLedger` and the values it answers with.

`ConsentLedger` (`ledger.service.ledger`) composes the parts in this package:
`head` (the log head), `signer` (keys and secrets), `writer` (appends),
`checker` (eligibility), `reads` (the read model), `clients` (API clients),
with `policies`, `subjectcache`, `groupcommit` and `keys` beneath them.
"""

from ledger.feed import ChangePage
from ledger.service.builds import BuildItem, BuildRecorder, ItemAnswer, ItemError, RecordedBuild
from ledger.service.clients import NOT_CACHED, SCOPES, Client
from ledger.service.head import HeadSnapshot
from ledger.service.ledger import ConsentLedger, cli_actor
from ledger.service.reads import LogSnapshot
from ledger.service.views import (
    CheckBatch,
    CheckItem,
    CheckRequest,
    EligibilityAnswer,
    SubjectView,
)
from ledger.service.writer import IdempotencyKey

__all__ = [
    "NOT_CACHED",
    "SCOPES",
    "BuildItem",
    "BuildRecorder",
    "ChangePage",
    "CheckBatch",
    "CheckItem",
    "CheckRequest",
    "Client",
    "ConsentLedger",
    "EligibilityAnswer",
    "HeadSnapshot",
    "IdempotencyKey",
    "ItemAnswer",
    "ItemError",
    "LogSnapshot",
    "RecordedBuild",
    "SubjectView",
    "cli_actor",
]
