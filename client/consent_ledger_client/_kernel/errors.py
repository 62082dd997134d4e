# Generated from ledger/errors.py by `python client/generate_kernel.py`; do not edit.
"""The ledger's errors: one base class, one subclass per way things go wrong.

The API and the CLI map these to HTTP statuses and exit codes; nothing above
`ledger` needs to know about `cryptography`, SQLAlchemy or parsing errors.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error the ledger raises on purpose."""


class InvalidInput(LedgerError):
    """A caller supplied a value the ledger cannot accept.

    `field` names the offending input (``"decisions[2].category"``) so that the
    API can point at it and the CLI can print it.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def __str__(self) -> str:
        message = super().__str__()
        return f"{self.field}: {message}" if self.field else message


class PolicyError(InvalidInput):
    """A policy document is malformed or inconsistent."""


class NotFound(LedgerError):
    """The thing asked for does not exist (subject, entry, tree size)."""


class Conflict(LedgerError):
    """The request contradicts the ledger's state (already initialised, reused key)."""


class NotFresh(LedgerError):
    """This replica has not yet reached the tree size the caller asked for; retry shortly."""


class CatchingUp(LedgerError):
    """Derived state (purge obligations after a policy publication) is still being worked
    out: answering now would be partial. Retry shortly."""


class ReadOnlyDatabase(LedgerError):
    """This server's database refuses writes (a read replica): send writes to the primary."""


class NotInitialized(LedgerError):
    """There is no ledger here yet: run `consent-ledger init`."""


class SigningKeyError(LedgerError):
    """A signing key is missing, unreadable or locked by a passphrase."""


class AppendOnlyViolation(LedgerError):
    """The database refused to change or remove a log row."""


class VerificationError(LedgerError):
    """A signature, proof, checkpoint or stored row failed verification.

    `subject` names the first bad thing (``"entry 41"``, ``"checkpoint 120"``,
    ``"subject s_3f…"``) so that an auditor knows where to look.
    """

    def __init__(self, message: str, *, subject: str | None = None) -> None:
        super().__init__(message)
        self.subject = subject

    def __str__(self) -> str:
        message = super().__str__()
        return f"{self.subject}: {message}" if self.subject else message
