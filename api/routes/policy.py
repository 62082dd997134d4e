"""The consent policy in force, and publishing a new one."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from api.deps import AdminClient, LedgerDep, ReadClient
from ledger.consent.policy import Policy
from ledger.errors import InvalidInput

router = APIRouter(prefix="/v1/policy", tags=["policy"])


@router.get("")
def get_policy(ledger: LedgerDep, _: ReadClient) -> dict[str, Any]:
    """The policy document in force (version, taxonomy, regimes, rules, defaults)."""
    return ledger.current_policy().to_document()


@router.put(
    "",
    status_code=201,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/toml": {"schema": {"type": "string"}},
            },
        }
    },
)
async def put_policy(request: Request, ledger: LedgerDep, client: AdminClient) -> dict[str, Any]:
    """Publish a policy (JSON document or TOML); its version must be newer than the last."""
    raw = await request.body()
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if content_type in ("application/toml", "text/toml", "text/plain"):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("TOML must be UTF-8", field="body") from None
        policy = Policy.from_toml(text)
    else:
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"not valid JSON: {exc}", field="body") from None
        if not isinstance(document, dict):
            raise InvalidInput("must be a policy document (JSON object)", field="body")
        policy = Policy.from_document(document)
    # A write waits for the write lock and a commit: never on the event loop.
    sealed = await run_in_threadpool(ledger.publish_policy, policy, actor=client.name)
    return {"version": policy.version, "entry": sealed.entries[0].seq, "token": sealed.tree_size}
