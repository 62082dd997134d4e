"""Dependencies shared by the routes: the ledger, the calling client and its scopes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ledger.clients import Client, authenticate
from ledger.service import ConsentLedger

_bearer = HTTPBearer(
    auto_error=False, description="An API key from `consent-ledger clients create`"
)


def get_ledger(request: Request) -> ConsentLedger:
    ledger: ConsentLedger = request.app.state.ledger
    return ledger


LedgerDep = Annotated[ConsentLedger, Depends(get_ledger)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": 'Bearer realm="consent-ledger"'})


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def authorize(ledger: ConsentLedger, credentials: Credentials, scope: str) -> Client:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("missing API key: send `Authorization: Bearer <key>`")
    client = authenticate(ledger.engine, credentials.credentials)
    if client is None:
        raise _unauthorized("invalid or revoked API key")
    if scope not in client.scopes:
        raise HTTPException(403, f"this key lacks the `{scope}` scope")
    return client


def require(scope: str) -> Callable[..., Client]:
    """A dependency that admits only clients holding `scope`."""

    def dependency(ledger: LedgerDep, credentials: Credentials) -> Client:
        return authorize(ledger, credentials, scope)

    dependency.__name__ = f"require_{scope}"
    return dependency


CheckClient = Annotated[Client, Depends(require("check"))]
RecordClient = Annotated[Client, Depends(require("record"))]
ReadClient = Annotated[Client, Depends(require("read"))]
AuditClient = Annotated[Client, Depends(require("audit"))]
AdminClient = Annotated[Client, Depends(require("admin"))]
