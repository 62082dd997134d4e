"""TEMPORARY stand-in for the lead's change feed (`ConsentLedger.changes`, issue 14), with
the interface of the brief, so that webhook delivery can run before the feed lands on
main. Deleted when main is merged. No effects, obligations or proofs: just the entries."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from ledger.errors import InvalidInput
from ledger.service.reads import ReadModel


@dataclass(frozen=True, slots=True)
class ChangePage:
    events: list[dict[str, Any]]
    next: int
    tree_size: int
    checkpoint: str
    proof: list[bytes] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "next": self.next,
            "tree_size": self.tree_size,
            "checkpoint": self.checkpoint,
            "proof": [base64.b64encode(item).decode() for item in self.proof],
        }


def changes(
    reads: ReadModel, after: int, limit: int = 1000, *, kinds: frozenset[str] | None = None
) -> ChangePage:
    if not 1 <= limit <= 10_000:
        raise InvalidInput("must be 1..10000", field="limit")
    with reads.snapshot() as snapshot:
        note = snapshot.latest_checkpoint()
        if not 0 <= after <= note.tree_size:
            raise InvalidInput(f"beyond the log ({note.tree_size})", field="after")
        entries = snapshot.read_entries(after, min(limit, note.tree_size - after))
    events = [
        {
            "seq": entry.seq,
            "kind": entry.kind,
            "time": entry.body.get("time"),
            "canonical": base64.b64encode(entry.canonical).decode(),
            **entry.data,
        }
        for entry in entries
        if kinds is None or entry.kind in kinds
    ]
    return ChangePage(events, after + len(entries), note.tree_size, note.note)
