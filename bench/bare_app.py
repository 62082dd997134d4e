"""P2's baseline: a bare FastAPI app answering a constant, served like `consent-ledger serve`.

    python -m bench.bare_app --port 8123 --workers 1

`POST /v1/eligibility/check` is an `async def` returning a constant of the
shape of the real answer (the cheapest endpoint FastAPI serves);
`POST /sync/check` is the same as a plain `def`, which FastAPI runs in its
thread pool like the real check route. uvicorn gets the settings of
`consent-ledger serve` (factory app, httptools/uvloop as installed, no access
log, log level info).
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from fastapi import FastAPI

CONSTANT: dict[str, Any] = {
    "eligible": True,
    "reason": "granted",
    "decided_by": 12345,
    "policy_version": 1,
    "checked_at": 1292211,
    "at": "2026-11-26T12:00:00.000000Z",
}


def create_app() -> FastAPI:
    app = FastAPI(title="bare")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/eligibility/check")
    async def check() -> dict[str, Any]:
        return CONSTANT

    @app.post("/sync/check")
    def sync_check() -> dict[str, Any]:
        return CONSTANT

    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    uvicorn.run(
        "bench.bare_app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="info",
        access_log=False,
    )


if __name__ == "__main__":
    main()
