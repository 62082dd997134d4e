"""What the client raises: every error is a `ClientError`.

The client stands alone: it does not import the ledger's packages, so its
`VerificationError` is not `ledger.errors.VerificationError`. It subclasses
the client's copy of that class (`consent_ledger_client._kernel.errors`, the
one the copied verification code raises) and carries the same `subject`.
"""

from __future__ import annotations

from typing import Any

from consent_ledger_client._kernel.errors import VerificationError as KernelVerificationError

__all__ = [
    "ApiError",
    "ClientError",
    "InvalidRecord",
    "MissingScope",
    "ProtocolError",
    "TransportError",
    "VerificationError",
]


class ClientError(Exception):
    """Base of everything the consent-ledger client raises on purpose."""


class VerificationError(KernelVerificationError, ClientError):
    """A receipt, bundle or checkpoint from the server failed verification.

    Never ignore it: the server (or something between it and you) returned
    evidence that does not prove what it claims, or a log that is not an
    extension of the one you trusted before (a fork or a rollback).

    `document` is the unverified response, if there was one (a write that
    reached the server has happened even when its receipt fails to verify).
    """

    def __init__(self, message: str, *, subject: str | None = None, document: Any = None) -> None:
        super().__init__(message, subject=subject)
        self.document = document


class ApiError(ClientError):
    """The server answered with an HTTP error (an RFC 9457 problem document).

    `status`, `title`, `detail` and `errors` (a list of ``{"field", "message"}``
    for validation errors) come from the problem document; `retry_after` from
    the ``Retry-After`` header (seconds), when the server sent one.
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        problem: dict[str, Any] | None = None,
        retry_after: float | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail
        self.title = title
        self.errors = errors or []
        self.problem = problem or {}
        self.retry_after = retry_after
        self.method = method
        self.url = url
        # For errors met while verifying a write's answer: that answer.
        self.document: Any = None

    def __str__(self) -> str:
        where = f"{self.method} {self.url} -> " if self.method and self.url else ""
        return f"{where}HTTP {self.status}: {self.detail}"


class MissingScope(ApiError):
    """The API key lacks a scope this operation needs (HTTP 403).

    Raised with an explanation when the client itself needed the scope, e.g.
    the `audit` scope for the consistency proofs that receipt verification
    asks for.
    """


class InvalidRecord(ClientError):
    """A record given to `filter` could not be checked (bad subject id or category).

    `position` is the record's 0-based position in the input; `field` and
    `message` are the server's per-item error.
    """

    def __init__(self, position: int, field: str | None, message: str) -> None:
        super().__init__(position, field, message)
        self.position = position
        self.field = field
        self.message = message

    def __str__(self) -> str:
        where = f" ({self.field})" if self.field else ""
        return f"record {self.position}{where}: {self.message}"


class ProtocolError(ClientError):
    """The server's answer is not what the API promises (wrong shape, wrong count)."""


class TransportError(ClientError):
    """The request did not get an HTTP answer (connection refused, timeout, …)."""
