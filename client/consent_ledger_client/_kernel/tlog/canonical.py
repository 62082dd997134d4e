# Generated from ledger/tlog/canonical.py by `python client/generate_kernel.py`; do not edit.
"""Canonical bytes of log entries: RFC 8785 (JCS) in UTF-8.

These bytes are what the log hashes, stores and serves, so every producer of
an entry goes through `canonical_bytes` and every reader through
`parse_canonical`.

`rfc8785` is the reference encoder, but at ~30 µs an entry it would dominate
bulk imports and verification. For the JSON this ledger writes — no floats,
ASCII object keys, integers inside the IEEE-754 exact range — orjson with
sorted keys produces exactly the JCS bytes (same escaping rules, and key
order by UTF-16 code units equals byte order for ASCII keys). Anything outside
that subset goes to `rfc8785`. `tests/test_canonical.py` checks the two agree.
"""

from __future__ import annotations

from typing import Any

import orjson
import rfc8785

from consent_ledger_client._kernel.errors import InvalidInput, VerificationError

# JCS numbers are IEEE-754 doubles: larger integers are not portable.
MAX_SAFE_INTEGER = 2**53 - 1


def _fast_path_safe(value: Any) -> bool:
    """Tell whether orjson's output is the JCS output; raise on floats.

    Scalars are checked in place and only containers go on the stack: this
    runs for every entry written and every entry verified.
    """
    safe = True
    stack: list[Any] = [value]
    while stack:
        container = stack.pop()
        if type(container) is dict:
            for key in container:
                if type(key) is not str:
                    raise InvalidInput("object keys must be strings", field=_path_to(value, key))
                if not key.isascii():
                    safe = False
            children: Any = container.values()
        else:
            children = container
        for child in children:
            kind = type(child)
            if kind is str or kind is bool or child is None:
                continue
            if kind is int:
                if not -MAX_SAFE_INTEGER <= child <= MAX_SAFE_INTEGER:
                    safe = False
            elif kind is dict or kind is list or kind is tuple:
                stack.append(child)
            elif kind is float:
                # The contract bans floats outright: their text forms are a
                # classic source of disagreement between implementations.
                raise InvalidInput(
                    "floats are not allowed in log entries", field=_path_to(value, child)
                )
            else:
                raise InvalidInput(
                    f"cannot encode {kind.__name__} in JSON", field=_path_to(value, child)
                )
    return safe


def _path_to(root: Any, target: Any, path: str = "") -> str:
    """Where `target` (a value, or a dict key) sits in `root`: only computed for error messages."""
    if isinstance(root, dict):
        for key, child in root.items():
            here = f"{path}.{key}" if path else str(key)
            if key is target or child is target:
                return here
            found = _path_to(child, target, here)
            if found:
                return found
    elif isinstance(root, list | tuple):
        for index, child in enumerate(root):
            here = f"{path}[{index}]"
            if child is target:
                return here
            found = _path_to(child, target, here)
            if found:
                return found
    return path if root is target else ""


def canonical_bytes(value: dict[str, Any], *, vetted: bool = False) -> bytes:
    """Encode an entry (or any JSON object) as RFC 8785 canonical UTF-8 bytes.

    `vetted=True` skips the `_fast_path_safe` walk, for bodies the ledger
    assembled itself from validated values: the caller guarantees what the
    walk would confirm — every key an ASCII string, and only strings, bools,
    None, dicts, lists and integers within ±MAX_SAFE_INTEGER, no floats. For
    such values orjson's output is the JCS output (a string orjson cannot
    encode still goes to the reference encoder).
    """
    if vetted or _fast_path_safe(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            pass  # e.g. a lone surrogate: let the reference encoder decide
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
    # The cheap test first: for ASCII bytes (hence ASCII keys, whose JCS order
    # is byte order), no floats and integers within ±MAX_SAFE_INTEGER, orjson
    # with sorted keys writes exactly the JCS bytes (the fast path of
    # `canonical_bytes`), so bytes it re-encodes unchanged are canonical.
    # Verification runs this on every entry.
    if data.isascii() and not _holds_float(value):
        try:
            if orjson.dumps(value, option=_STRICT_SORTED) == data:
                return value
        except orjson.JSONEncodeError:
            pass  # an integer beyond ±MAX_SAFE_INTEGER
    # Everything else (non-ASCII, floats, large integers, or simply not
    # canonical) takes the full check, which also says what is wrong.
    try:
        encoded = canonical_bytes(value)
    except InvalidInput as exc:
        raise VerificationError(f"not canonical JSON: {exc}") from exc
    if encoded != data:
        raise VerificationError("bytes are not in RFC 8785 canonical form")
    return value


# Integers beyond ±MAX_SAFE_INTEGER make orjson raise instead of encoding them.
_STRICT_SORTED = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER
_SCALARS = frozenset({str, int, bool, type(None)})


def _holds_float(value: dict[str, Any]) -> bool:
    """Whether a value from `orjson.loads` has a float anywhere in it."""
    kinds = list(map(type, value.values()))
    if float in kinds:
        return True
    # A log entry's shape, checked with a few C-level calls: scalars, and
    # scalars only in the one object under `data`.
    if list not in kinds:
        objects = kinds.count(dict)
        if objects == 0:
            return False
        data = value.get("data")
        if objects == 1 and type(data) is dict and set(map(type, data.values())) <= _SCALARS:
            return False
    pending: list[Any] = [value]
    while pending:
        container = pending.pop()
        for child in container.values() if type(container) is dict else container:
            kind = type(child)
            if kind is float:
                return True
            if kind is dict or kind is list:
                pending.append(child)
    return False
