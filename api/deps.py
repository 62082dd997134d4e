"""Dependencies shared by the routes: the ledger, the log head, the calling client.

All of them are `async def` and answer from memory when they can: FastAPI runs
a plain `def` dependency in its thread pool, and on the check path those hops
cost more than the check itself. What must read the database (a key not yet
cached) goes to the thread pool explicitly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BaseModel, ValidationError

from ledger.service import NOT_CACHED, Client, ConsentLedger, HeadSnapshot

_bearer = HTTPBearer(
    auto_error=False, description="An API key from `consent-ledger clients create`"
)


async def get_ledger(request: Request) -> ConsentLedger:
    ledger: ConsentLedger = request.app.state.ledger
    return ledger


LedgerDep = Annotated[ConsentLedger, Depends(get_ledger)]


async def get_head(ledger: LedgerDep) -> HeadSnapshot:
    """The log head, shared by the key check and the route of one request.

    The ledger decides how fresh it must be and never blocks the event loop
    on a remote database (`HeadTracker.head_async`).
    """
    return await ledger.head_async()


HeadDep = Annotated[HeadSnapshot, Depends(get_head)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": 'Bearer realm="consent-ledger"'})


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


# What a route that declares no dependencies puts in its OpenAPI operation.
BEARER_SECURITY = [{"HTTPBearer": []}]


def bearer_key(request: Request) -> str | None:
    """The key of an `Authorization: Bearer` header, as `HTTPBearer(auto_error=False)` reads it."""
    scheme, key = get_authorization_scheme_param(request.headers.get("authorization"))
    if not key or scheme.lower() != "bearer":
        return None
    return key


async def authorize(
    ledger: ConsentLedger, head: HeadSnapshot, key: str | None, scope: str
) -> Client:
    """The client holding `key` if it has `scope`; else 401 or 403."""
    if key is None:
        raise _unauthorized("missing API key: send `Authorization: Bearer <key>`")
    # Keys are cached for one generation of the clients table, read with the head:
    # a revocation elsewhere takes effect within the head's age, one here at once.
    client = ledger.cached_client(key, head)
    if client is NOT_CACHED:
        client = await run_in_threadpool(ledger.authenticate, key, head)
    if not isinstance(client, Client):
        raise _unauthorized("invalid or revoked API key")
    if scope not in client.scopes:
        raise HTTPException(403, f"this key lacks the `{scope}` scope")
    return client


def require(scope: str) -> Callable[..., Awaitable[Client]]:
    """A dependency that admits only clients holding `scope`."""

    async def dependency(ledger: LedgerDep, head: HeadDep, credentials: Credentials) -> Client:
        key = credentials.credentials if credentials is not None else None
        return await authorize(ledger, head, key, scope)

    dependency.__name__ = f"require_{scope}"
    return dependency


CheckClient = Annotated[Client, Depends(require("check"))]
RecordClient = Annotated[Client, Depends(require("record"))]
ReadClient = Annotated[Client, Depends(require("read"))]
AuditClient = Annotated[Client, Depends(require("audit"))]
AdminClient = Annotated[Client, Depends(require("admin"))]


Body = TypeVar("Body", bound=BaseModel)


async def json_body(request: Request, model: type[Body]) -> Body:
    """The request's JSON body as `model`, for routes that take no FastAPI parameters.

    Invalid bodies raise the same `RequestValidationError` FastAPI would.
    """
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from None
