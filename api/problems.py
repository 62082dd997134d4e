"""RFC 9457 problem details for every error the API returns."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ledger.errors import (
    CatchingUp,
    Conflict,
    InvalidInput,
    LedgerError,
    NotFound,
    NotFresh,
    NotInitialized,
    ReadOnlyDatabase,
    SigningKeyError,
    VerificationError,
)

logger = logging.getLogger("consent_ledger.api")

PROBLEM_JSON = "application/problem+json"
_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    500: "Internal server error",
    503: "Service unavailable",
}


def problem(
    status: int,
    detail: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    return Response(
        orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


def status_of(exc: LedgerError) -> int:
    if isinstance(exc, InvalidInput | VerificationError):
        return 422
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, NotInitialized | SigningKeyError | NotFresh | ReadOnlyDatabase | CatchingUp):
        return 503
    return 500


def ledger_problem(exc: LedgerError) -> Response:
    status = status_of(exc)
    errors = None
    if isinstance(exc, InvalidInput) and exc.field:
        errors = [{"field": exc.field, "message": str(exc.args[0])}]
    if status == 500:
        logger.error("unexpected ledger error: %s", exc)
    headers = {"Retry-After": "1"} if isinstance(exc, NotFresh | CatchingUp) else None
    return problem(status, str(exc), errors=errors, headers=headers)


def _field(location: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(part) for part in location if part not in ("body", "query", "path", "header")]
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(LedgerError)
    async def _ledger_error(_: Request, exc: LedgerError) -> Response:
        return ledger_problem(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"field": _field(error.get("loc", ())), "message": error.get("msg", "invalid")}
            for error in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return problem(422, detail or "invalid request", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers) if exc.headers else None
        return problem(exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        # Never a traceback to the client; always one in the server log.
        logger.exception("unhandled error", exc_info=exc)
        return problem(500, "internal error; the server log has the details")
