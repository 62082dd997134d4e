"""A platform's calls to a ledger, made once against a real one and replayed offline.

`record_ledger.py` runs `run` against the real API and stores every answer in
`data/ledger.json` under `exchange_key`; the tests run it again against those
answers (`RecordedLedger`), so what the client verifies offline is
what a real server sent.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from consent_ledger_client import ConsentLedgerClient, FilterResult, Receipt, VerifiedBundle
from consent_ledger_client._kernel.tlog.notes import Checkpoint

BASE_URL = "http://testserver"
PROOF_PATH = "/v1/ledger/proofs/consistency"
POSTS = [
    {"subject_id": "user-1", "text": "first"},
    {"subject_id": "user-2", "text": "second"},
    {"subject_id": "user-1", "text": "third"},
]


@dataclass(frozen=True)
class Outcome:
    receipts: dict[str, Receipt]
    check: dict[str, Any]
    filtered: FilterResult[dict[str, Any]]
    kept: list[dict[str, Any]]
    history: VerifiedBundle
    checkpoint: Checkpoint


def exchange_key(request: httpx.Request) -> str:
    """Method, path with query, and the JSON body with sorted keys: what identifies a call."""
    body = ""
    if request.content:
        body = orjson.dumps(orjson.loads(request.content), option=orjson.OPT_SORT_KEYS).decode()
    return f"{request.method} {request.url.raw_path.decode('ascii')} {body}".rstrip()


def run(client: ConsentLedgerClient, *, elsewhere: Callable[[str], None] | None = None) -> Outcome:
    """Register two subjects, record a decision for each, check, filter, read back.

    `elsewhere(subject_id)` (when recording) registers a subject behind the
    client's back, so that its next receipt needs a consistency proof.
    """
    receipts = {
        "user-1": client.register("user-1", "US"),
        "user-2": client.register("user-2", "FR"),
        "user-1 content.public": client.record(
            "user-1", [{"category": "content.public", "decision": "granted"}]
        ),
    }
    if elsewhere is not None:
        elsewhere("other-1")
        elsewhere("other-2")
    receipts["user-2 content.public"] = client.record(
        "user-2", [{"category": "content.public", "decision": "denied"}]
    )
    check = client.check("user-1", "content.public")
    filtered = client.filter(POSTS, category="content.public", batch_size=2)
    kept = list(filtered)
    return Outcome(
        receipts=receipts,
        check=check,
        filtered=filtered,
        kept=kept,
        history=client.history("user-1"),
        checkpoint=client.checkpoint(),
    )


class RecordedLedger(httpx.BaseTransport):
    """Answers each request as the real ledger answered it; 404 for anything never asked.

    `asked` lists the keys of the requests, in order; `edit(key, document)` may
    return a replacement for a JSON answer (a tampering server).
    """

    def __init__(self, exchanges: dict[str, dict[str, Any]]) -> None:
        self.exchanges = exchanges
        self.asked: list[str] = []
        self.edit: Callable[[str, Any], Any] | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        key = exchange_key(request)
        self.asked.append(key)
        answer = self.exchanges.get(key)
        if answer is None:
            problem = {"title": "Not Found", "status": 404, "detail": f"not recorded: {key}"}
            return httpx.Response(404, json=problem, request=request)
        content = answer["body"].encode()
        if self.edit is not None and answer["content_type"].startswith("application/json"):
            edited = self.edit(key, json.loads(content))
            if edited is not None:
                content = json.dumps(edited).encode()
        return httpx.Response(
            answer["status"],
            headers={"content-type": answer["content_type"]},
            content=content,
            request=request,
        )

    def proofs_asked(self) -> list[tuple[int, int]]:
        pairs = []
        for key in self.asked:
            if key.startswith("GET /v1/ledger/proofs/consistency?"):
                query = dict(part.split("=") for part in key.split("?", 1)[1].split("&"))
                pairs.append((int(query["old_size"]), int(query["new_size"])))
        return pairs
