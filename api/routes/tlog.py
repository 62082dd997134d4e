"""The C2SP tlog-tiles read path under /tlog/ (public when CONSENT_LEDGER_PUBLIC_LOG)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from starlette.responses import PlainTextResponse, Response

from api.deps import Credentials, LedgerDep, authorize
from ledger.tlog.tiles import parse_tile_path

router = APIRouter(prefix="/tlog", tags=["tlog-tiles"])


async def tlog_access(ledger: LedgerDep, credentials: Credentials) -> None:
    """Audit scope, unless the operator made the log public."""
    if not ledger.settings.public_log:
        key = credentials.credentials if credentials is not None else None
        await authorize(ledger, await ledger.head_async(), key, "audit")


Access = Annotated[None, Depends(tlog_access)]


@router.get("/checkpoint", response_class=PlainTextResponse)
def checkpoint(ledger: LedgerDep, _: Access) -> PlainTextResponse:
    """The latest checkpoint."""
    return PlainTextResponse(ledger.checkpoint(), headers={"Cache-Control": "no-cache"})


@router.get("/tile/{path:path}")
def tile(path: str, ledger: LedgerDep, _: Access) -> Response:
    """A hash tile `<L>/<N>[.p/<W>]` or entry bundle `entries/<N>[.p/<W>]`."""
    address = parse_tile_path(path)
    data = ledger.tile(address)
    # Full tiles never change; partial ones are replaced as the log grows.
    cache = "no-cache" if address.partial else "public, max-age=31536000, immutable"
    return Response(data, media_type="application/octet-stream", headers={"Cache-Control": cache})
