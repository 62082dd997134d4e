"""The log itself, for auditors: checkpoint, entries and RFC 9162 proofs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from starlette.responses import PlainTextResponse

from api.deps import AuditClient, LedgerDep
from ledger.tlog.notes import b64

router = APIRouter(prefix="/v1/ledger", tags=["log"])

MAX_PAGE = 1000


@router.get("/checkpoint", response_class=PlainTextResponse)
def checkpoint(ledger: LedgerDep, _: AuditClient) -> PlainTextResponse:
    """The latest signed checkpoint (C2SP signed note)."""
    return PlainTextResponse(ledger.checkpoint())


@router.get("/entries")
def entries(
    ledger: LedgerDep,
    _: AuditClient,
    start: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> dict[str, Any]:
    """Entries `start` … `start + limit - 1`, with their canonical bytes."""
    page = ledger.entries(start, limit)
    return {
        "tree_size": ledger.tree_size(),
        "entries": [
            {"index": entry.seq, "canonical": b64(entry.canonical), "entry": entry.body}
            for entry in page
        ],
    }


@router.get("/entries/{seq}")
def entry(seq: Annotated[int, Path(ge=0)], ledger: LedgerDep, _: AuditClient) -> dict[str, Any]:
    """One entry with its canonical bytes."""
    found = ledger.entry(seq)
    return {"index": found.seq, "canonical": b64(found.canonical), "entry": found.body}


@router.get("/proofs/inclusion")
def inclusion(
    ledger: LedgerDep,
    _: AuditClient,
    index: Annotated[int, Query(ge=0)],
    tree_size: Annotated[int | None, Query(ge=1)] = None,
) -> dict[str, Any]:
    """RFC 9162 inclusion proof of entry `index` in the tree of `tree_size` (default latest)."""
    proof = ledger.inclusion_proof(index, tree_size)
    return {
        "index": proof["index"],
        "tree_size": proof["tree_size"],
        "leaf_hash": b64(proof["leaf_hash"]),
        "hashes": [b64(node) for node in proof["hashes"]],
    }


@router.get("/proofs/consistency")
def consistency(
    ledger: LedgerDep,
    _: AuditClient,
    old_size: Annotated[int, Query(ge=0)],
    new_size: Annotated[int, Query(ge=0)],
) -> dict[str, Any]:
    """RFC 9162 consistency proof between two tree sizes."""
    proof = ledger.consistency_proof(old_size, new_size)
    return {
        "old_size": old_size,
        "new_size": new_size,
        "hashes": [b64(node) for node in proof["hashes"]],
    }
