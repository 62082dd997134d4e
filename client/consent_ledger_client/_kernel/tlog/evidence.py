# Generated from ledger/tlog/evidence.py by `python client/generate_kernel.py`; do not edit.
"""Evidence bundles: one verifiable format for receipts, histories and reports.

A bundle is a signed checkpoint plus entries with their inclusion proofs
against it. Checking one needs nothing but the verifier key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from consent_ledger_client._kernel.errors import InvalidInput, VerificationError
from consent_ledger_client._kernel.tlog import merkle
from consent_ledger_client._kernel.tlog.canonical import parse_canonical
from consent_ledger_client._kernel.tlog.notes import (
    Checkpoint,
    VerifierKey,
    b64,
    open_checkpoint,
    unb64,
)


@dataclass(frozen=True, slots=True)
class EvidenceEntry:
    index: int
    canonical: bytes
    inclusion: tuple[bytes, ...]
    # The parsed entry as the bundle shows it to a reader; verification checks
    # that it says what the canonical bytes say.
    shown: dict[str, Any] | None = None

    @property
    def entry(self) -> dict[str, Any]:
        return parse_canonical(self.canonical)


@dataclass(frozen=True, slots=True)
class EvidenceBundle:
    verifier_key: str
    checkpoint: str
    entries: tuple[EvidenceEntry, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "verifier_key": self.verifier_key,
            "checkpoint": self.checkpoint,
            "entries": [
                {
                    "index": item.index,
                    "canonical": b64(item.canonical),
                    "inclusion": [b64(node) for node in item.inclusion],
                    "entry": item.entry,
                }
                for item in self.entries
            ],
        }

    @classmethod
    def from_json(cls, document: object) -> EvidenceBundle:
        """Parse a bundle, naming the first malformed field."""
        if not isinstance(document, dict):
            raise InvalidInput("an evidence bundle is a JSON object", field="bundle")
        for name in ("verifier_key", "checkpoint"):
            if not isinstance(document.get(name), str):
                raise InvalidInput("missing or not a string", field=name)
        raw_entries = document.get("entries")
        if not isinstance(raw_entries, list):
            raise InvalidInput("missing or not a list", field="entries")
        entries = []
        for position, raw in enumerate(raw_entries):
            where = f"entries[{position}]"
            if not isinstance(raw, dict):
                raise InvalidInput("not an object", field=where)
            index = raw.get("index")
            if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                raise InvalidInput("not a non-negative integer", field=f"{where}.index")
            canonical = raw.get("canonical")
            if not isinstance(canonical, str):
                raise InvalidInput("missing or not a string", field=f"{where}.canonical")
            proof = raw.get("inclusion")
            if not isinstance(proof, list) or not all(isinstance(h, str) for h in proof):
                raise InvalidInput("not a list of base64 hashes", field=f"{where}.inclusion")
            entries.append(
                EvidenceEntry(
                    index=index,
                    canonical=unb64(canonical, field=f"{where}.canonical"),
                    inclusion=tuple(
                        unb64(node, field=f"{where}.inclusion[{i}]") for i, node in enumerate(proof)
                    ),
                    shown=raw.get("entry") if isinstance(raw.get("entry"), dict) else None,
                )
            )
        return cls(
            verifier_key=document["verifier_key"],
            checkpoint=document["checkpoint"],
            entries=tuple(entries),
        )


def verify_bundle(bundle: EvidenceBundle, keys: Sequence[VerifierKey]) -> Checkpoint:
    """Check a bundle against trusted verifier keys; return the checkpoint it proves against.

    Raises VerificationError naming the first thing that fails.
    """
    # 1. The checkpoint is signed by a key the caller trusts (not merely the
    #    key the bundle claims: that one is a hint, never a trust anchor).
    checkpoint = open_checkpoint(bundle.checkpoint, keys)
    for item in bundle.entries:
        subject = f"entry {item.index}"
        # 2. Every entry is inside the checkpoint's tree.
        if item.index >= checkpoint.size:
            raise VerificationError(
                f"index is outside the checkpoint's tree of size {checkpoint.size}",
                subject=subject,
            )
        # 3. Its bytes are canonical and say they are that entry.
        try:
            body = parse_canonical(item.canonical)
        except VerificationError as exc:
            raise VerificationError(str(exc), subject=subject) from exc
        if body.get("seq") != item.index:
            raise VerificationError(
                f"canonical bytes carry seq {body.get('seq')!r}, not {item.index}",
                subject=subject,
            )
        if item.shown is not None and item.shown != body:
            raise VerificationError(
                "the readable `entry` differs from its canonical bytes", subject=subject
            )
        # 4. The leaf hash of those bytes is proven into the checkpoint's root.
        try:
            merkle.verify_inclusion(
                merkle.leaf_hash(item.canonical),
                item.index,
                checkpoint.size,
                item.inclusion,
                checkpoint.root,
            )
        except VerificationError as exc:
            raise VerificationError(f"inclusion proof fails: {exc}", subject=subject) from exc
    return checkpoint
