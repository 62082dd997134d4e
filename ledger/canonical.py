"""Canonical bytes of log entries: RFC 8785 (JCS) in UTF-8.

These bytes are what the log hashes, stores and serves, so every producer of
an entry goes through `canonical_bytes` and every reader through `parse_canonical`.
"""

from __future__ import annotations

from typing import Any

import orjson
import rfc8785

from ledger.errors import InvalidInput, VerificationError


def _reject_floats(value: Any, path: str) -> None:
    # JCS can encode floats, but their textual form is a classic source of
    # cross-implementation disagreement; the contract bans them outright.
    if isinstance(value, float):
        raise InvalidInput("floats are not allowed in log entries", field=path or "entry")
    if isinstance(value, dict):
        for key, item in value.items():
            _reject_floats(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _reject_floats(item, f"{path}[{index}]")


def canonical_bytes(value: dict[str, Any]) -> bytes:
    """Encode an entry (or any JSON object) as RFC 8785 canonical UTF-8 bytes."""
    _reject_floats(value, "")
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise InvalidInput(f"not canonicalisable JSON: {exc}") from exc


def parse_canonical(data: bytes) -> dict[str, Any]:
    """Parse canonical bytes, insisting that they are exactly canonical.

    Verification relies on this: bytes that parse but are not their own
    canonical form were not written by the ledger.
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise VerificationError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise VerificationError("not a JSON object")
    if _has_float(value) or bytes(rfc8785.dumps(value)) != data:
        raise VerificationError("bytes are not in RFC 8785 canonical form")
    return value


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_float(item) for item in value)
    return False
