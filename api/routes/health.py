"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from api.deps import AuditClient, LedgerDep
from api.problems import problem
from ledger.errors import LedgerError

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up (no authentication)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(ledger: LedgerDep) -> Any:
    """The database answers and the signing key loads (no authentication)."""
    try:
        size = await run_in_threadpool(ledger.tree_size)
        await run_in_threadpool(ledger.signing_key)
    except LedgerError as exc:
        return problem(503, f"not ready: {exc}")
    except Exception as exc:  # a database that is down raises driver errors
        return problem(503, f"not ready: database unavailable ({type(exc).__name__})")
    return {"status": "ready", "tree_size": size}


@router.get("/metrics")
def metrics(request: Request, _: AuditClient) -> Response:
    """Prometheus text exposition."""
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
