"""The change feed (SPEC §8): pages of events after a cursor, long-polled or streamed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from api.deps import LedgerDep, authorize, bearer_key, require
from ledger.feed.pages import MAX_PAGE
from ledger.service import ChangePage, Client, ConsentLedger

router = APIRouter(prefix="/v1", tags=["changes"])

FeedClient = Annotated[Client, Depends(require("feed"))]

# The longest long-poll (SPEC §8); how long a stream may stay idle is a setting.
MAX_WAIT = 30.0
NDJSON = "application/x-ndjson"


@router.get(
    "/changes",
    responses={
        200: {
            "description": "A page of events (JSON), or with `Accept: application/x-ndjson` "
            "a stream of events, batch ends and heartbeats",
            "content": {NDJSON: {"schema": {"type": "string"}}},
        }
    },
)
async def changes(
    request: Request,
    ledger: LedgerDep,
    _: FeedClient,
    after: Annotated[
        int, Query(ge=0, description="The cursor: a tree size; events follow it.")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Events per page.")] = 1000,
    wait: Annotated[
        float,
        Query(ge=0, le=MAX_WAIT, description="Seconds to wait for an event (long-poll)."),
    ] = 0.0,
) -> Response:
    """Events in log order after cursor `after`, each with its entry's canonical bytes,
    its effect and the obligations it opened; `next` is the cursor for the next page,
    and `proof` proves every event into `checkpoint` at once (a range proof)."""
    page = await run_in_threadpool(ledger.changes, after, limit)
    if NDJSON in request.headers.get("accept", ""):
        heartbeat = ledger.settings.feed_heartbeat_seconds
        lines = _stream(ledger, page, limit, heartbeat, bearer_key(request))
        return StreamingResponse(lines, media_type=NDJSON)
    if not page.events and wait > 0:
        await ledger.wait_beyond(page.next, wait)
        page = await run_in_threadpool(ledger.changes, after, limit)
    return Response(orjson.dumps(page.to_json()), media_type="application/json")


async def _stream(
    ledger: ConsentLedger, page: ChangePage, limit: int, heartbeat: float, key: str | None
) -> AsyncIterator[bytes]:
    """Batches as they are committed (by any process), each ended by its proof; a
    heartbeat while idle. Runs until the client leaves (Starlette then cancels it), or
    until its key is revoked or loses the `feed` scope: a stream that outlived its key
    would go on handing out subject ids."""
    while True:
        try:
            await authorize(ledger, await ledger.head_async(), key, "feed")
        except HTTPException:
            return
        if page.events:
            yield _batch(page)
        elif page.next >= page.tree_size:
            size = await ledger.wait_beyond(page.next, heartbeat)
            if size <= page.next:
                yield orjson.dumps({"next": page.next}) + b"\n"
                continue
        page = await run_in_threadpool(ledger.changes, page.next, limit)


def _batch(page: ChangePage) -> bytes:
    dumps = orjson.dumps
    lines: list[Any] = [dumps(event) for event in page.events]
    lines.append(dumps(page.end_line()))
    lines.append(b"")
    return b"\n".join(lines)
