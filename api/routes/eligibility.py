"""Eligibility: single checks, batches and NDJSON streams.

The batch and stream paths parse and render JSON with orjson directly and
evaluate all items with a fixed number of grouped queries: they are what a
dataset build calls millions of times. Their bodies are still documented in
the OpenAPI schema. A single check is answered from memory on the event loop
when the ledger can (`ConsentLedger.check_from_memory`), else in the thread pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from api.deps import (
    BEARER_SECURITY,
    CheckClient,
    LedgerDep,
    authorize,
    bearer_key,
    json_body,
)
from api.models import BatchBody, CheckBody, EligibilityOut
from ledger.consent.eligibility import Eligibility
from ledger.errors import InvalidInput
from ledger.service import CheckBatch, CheckItem, ConsentLedger

router = APIRouter(prefix="/v1/eligibility", tags=["eligibility"])

STREAM_CHUNK = 2_000
MAX_LINE = 64 * 1024


@router.post(
    "/check",
    response_model=EligibilityOut,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": CheckBody.model_json_schema()}},
        },
        "security": BEARER_SECURITY,
    },
)
async def check(request: Request) -> Response:
    """May this subject's data of this category be used for this purpose?"""
    # No FastAPI parameters: solving them cost more than the check. The steps
    # are those of the dependencies: head, key and scope, then the body.
    ledger: ConsentLedger = request.app.state.ledger
    head = await ledger.head_async()
    await authorize(ledger, head, bearer_key(request), "check")
    body = await json_body(request, CheckBody)
    answer = ledger.check_from_memory(
        body.subject_id,
        body.category,
        body.purpose,
        as_of=body.as_of,
        at=body.at,
        at_least_as_fresh=body.at_least_as_fresh,
        head=head,
    )
    if answer is None:
        answer = await run_in_threadpool(
            ledger.check,
            body.subject_id,
            body.category,
            body.purpose,
            as_of=body.as_of,
            at=body.at,
            at_least_as_fresh=body.at_least_as_fresh,
        )
    return Response(orjson.dumps(answer.to_json()), media_type="application/json")


def _optional_int(document: dict[str, Any], name: str) -> int | None:
    value = document.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput("must be a non-negative integer", field=name)
    return value


def _optional_str(document: dict[str, Any], name: str) -> str | None:
    value = document.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidInput("must be a string", field=name)
    return value


_NOT_AN_OBJECT: CheckItem = (None, None, None)


def _item(raw: Any) -> CheckItem:
    # Type errors become per-item errors inside check_many (validate_subject_id etc.).
    if type(raw) is not dict:
        return _NOT_AN_OBJECT
    return raw.get("subject_id"), raw.get("category"), raw.get("purpose")


def _result(raw: Any, result: Eligibility | InvalidInput) -> dict[str, Any]:
    if isinstance(result, InvalidInput):
        out: dict[str, Any] = {}
        if type(raw) is not dict:
            out["error"] = {"field": "item", "message": "each item must be a JSON object"}
            return out
        if "id" in raw:
            out["id"] = raw["id"]
        out["error"] = {"field": result.field, "message": str(result.args[0])}
        return out
    eligible, reason, decided_by = result
    if "id" in raw:
        return {"id": raw["id"], "eligible": eligible, "reason": reason, "decided_by": decided_by}
    return {"eligible": eligible, "reason": reason, "decided_by": decided_by}


def _header(batch: CheckBatch) -> dict[str, Any]:
    return {
        "checked_at": batch.checked_at,
        "at": batch.at,
        "checkpoint": batch.checkpoint,
        "policy_version": batch.policy_version,
    }


@router.post(
    "/batch",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": BatchBody.model_json_schema()}},
        }
    },
)
async def batch(request: Request, ledger: LedgerDep, _: CheckClient) -> Response:
    """Up to `batch_max_items` checks at one tree size; results in request order.

    A bad item gets its own `error`; too many items → 413.
    """
    try:
        document = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"not valid JSON: {exc}", field="body") from None
    if not isinstance(document, dict):
        raise InvalidInput("must be a JSON object", field="body")
    items = document.get("items")
    if not isinstance(items, list):
        raise InvalidInput("must be a list of items", field="items")
    limit = ledger.settings.batch_max_items
    if len(items) > limit:
        raise HTTPException(413, f"{len(items)} items; a batch holds at most {limit}")
    purpose = _optional_str(document, "purpose")
    as_of = _optional_int(document, "as_of")
    at = _optional_str(document, "at")
    fresh = _optional_int(document, "at_least_as_fresh")
    result = await run_in_threadpool(_evaluate, ledger, items, purpose, as_of, at, fresh)
    return Response(result, media_type="application/json")


def _evaluate(
    ledger: ConsentLedger,
    items: list[Any],
    purpose: str | None,
    as_of: int | None,
    at: str | None,
    fresh: int | None,
) -> bytes:
    checked = ledger.check_many(
        [_item(raw) for raw in items],
        purpose=purpose,
        as_of=as_of,
        at=at,
        at_least_as_fresh=fresh,
    )
    body = _header(checked)
    body["results"] = [
        _result(raw, result) for raw, result in zip(items, checked.results, strict=True)
    ]
    return orjson.dumps(body)


@router.post(
    "/stream",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-ndjson": {
                    "schema": {"type": "string", "description": "one item object per line"}
                }
            },
        }
    },
    response_class=StreamingResponse,
)
async def stream(
    request: Request,
    ledger: LedgerDep,
    _: CheckClient,
    purpose: str | None = Query(default=None, max_length=128),
    as_of: int | None = Query(default=None, ge=1),
    at: str | None = Query(default=None, max_length=64),
    at_least_as_fresh: int | None = Query(default=None, ge=0),
) -> StreamingResponse:
    """NDJSON items in, NDJSON results out, in order; no item limit, constant memory.

    The first output line is `{"checked_at","at","checkpoint","policy_version"}`;
    every item is evaluated at that tree size and time.
    """
    # Fix the tree size and time before streaming, so that errors in them are
    # a plain 422 and every result line answers the same question.
    header = await run_in_threadpool(
        ledger.check_many,
        [],
        purpose=purpose,
        as_of=as_of,
        at=at,
        at_least_as_fresh=at_least_as_fresh,
    )

    async def lines() -> AsyncIterator[bytes]:
        yield orjson.dumps(_header(header)) + b"\n"
        pending: list[Any] = []
        buffer = b""
        overlong = False  # inside a line longer than MAX_LINE: answered, then skipped
        try:
            async for chunk in request.stream():
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for line in complete:
                    if overlong:
                        overlong = False
                    elif line.strip():
                        pending.append(_parse_line(line))
                if len(buffer) > MAX_LINE:
                    # Constant memory holds per line too: one error result, not a huge buffer.
                    if not overlong:
                        pending.append(_BadLine(f"line longer than {MAX_LINE} bytes"))
                    overlong = True
                    buffer = b""
                if len(pending) >= STREAM_CHUNK:
                    yield await run_in_threadpool(_stream_chunk, ledger, pending, header, purpose)
                    pending = []
        except ClientDisconnect:
            return  # the client went away: nobody is left to answer
        if buffer.strip() and not overlong:
            pending.append(_parse_line(buffer))
        if pending:
            yield await run_in_threadpool(_stream_chunk, ledger, pending, header, purpose)

    return DuplexStreamingResponse(lines(), media_type="application/x-ndjson")


class DuplexStreamingResponse(StreamingResponse):
    """Streams while the request body is still being read.

    Starlette's StreamingResponse also listens for the client's disconnect on
    `receive`, which would swallow the request-body messages this endpoint is
    reading; here the body reader is the only consumer of `receive`.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.stream_response(send)
        if self.background is not None:
            await self.background()


def _parse_line(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return _BadLine("not valid JSON")


class _BadLine:
    """A line that was not JSON: it gets its own error result, like a bad batch item."""

    def __init__(self, message: str) -> None:
        self.message = message


def _stream_chunk(
    ledger: ConsentLedger, items: list[Any], header: CheckBatch, purpose: str | None
) -> bytes:
    checked = ledger.check_many(
        [_item(raw) for raw in items],
        purpose=purpose,
        as_of=header.checked_at,
        at=header.at,
    )
    out = bytearray()
    for raw, result in zip(items, checked.results, strict=True):
        if isinstance(raw, _BadLine):
            line: dict[str, Any] = {"error": {"field": "line", "message": raw.message}}
        else:
            line = _result(raw, result)
        out += orjson.dumps(line)
        out += b"\n"
    return bytes(out)
