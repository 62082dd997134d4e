"""Canonical bytes: the orjson fast path must agree with the RFC 8785 reference."""

from __future__ import annotations

import orjson
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import InvalidInput, VerificationError
from ledger.tlog.canonical import MAX_SAFE_INTEGER, canonical_bytes, parse_canonical

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_canonical_bytes_equal_rfc8785_reference(document: dict[str, object]) -> None:
    assert canonical_bytes(document) == bytes(rfc8785.dumps(document))


# What the ledger builds entries from: ASCII keys, strings, bools, None, safe integers.
vetted_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(alphabet=st.characters(max_codepoint=127)), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.dictionaries(st.text(alphabet=st.characters(max_codepoint=127)), vetted_values))
def test_vetted_bodies_skip_the_walk_and_still_equal_rfc8785(document: dict[str, object]) -> None:
    assert canonical_bytes(document, vetted=True) == bytes(rfc8785.dumps(document))


@settings(max_examples=200)
@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_canonical_bytes_parse_back_to_the_same_document(document: dict[str, object]) -> None:
    assert parse_canonical(canonical_bytes(document)) == document


def test_keys_are_sorted_by_utf16_code_units_as_rfc8785_requires() -> None:
    # U+E000 sorts after U+1F600 in code points but before it in UTF-16 units.
    document = {"\U0001f600": 1, "\ue000": 2, "a": 3}
    assert canonical_bytes(document) == bytes(rfc8785.dumps(document))


@pytest.mark.parametrize(
    ("document", "field"),
    [({"a": 1.5}, "a"), ({"data": {"n": [1, 2.0]}}, r"data\.n\[1\]")],
)
def test_floats_are_refused_naming_where(document: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput, match=field):
        canonical_bytes(document)


@pytest.mark.parametrize(
    "data",
    [b'{"b":1,"a":2}', b'{"a": 1}', b'{"a":1.0}', b"[1]", b"not json", b'{"a":"\\u0041"}'],
)
def test_non_canonical_bytes_are_rejected(data: bytes) -> None:
    with pytest.raises(VerificationError):
        parse_canonical(data)


# What parse_canonical must refuse even where orjson reads and re-writes the bytes
# unchanged: its fast path compares against orjson's output, the contract is RFC 8785
# without floats or integers beyond ±(2**53 - 1).
ORJSON_ROUND_TRIPS_BUT_NOT_CANONICAL = [
    pytest.param(b'{"a":1.5}', id="float"),
    pytest.param(b'{"a":-0.0}', id="negative-zero"),
    pytest.param(b'{"a":1e+100}', id="exponent"),
    pytest.param(b'{"a":1.5e-7}', id="fraction-and-exponent"),
    pytest.param(b'{"a":[true,2.5,false]}', id="float-in-a-list"),
    pytest.param(b'{"data":{"n":{"m":[0.5]}},"v":1}', id="float-deep-under-data"),
    pytest.param(b'{"a":9007199254740992}', id="just-past-safe-integer"),
    pytest.param(b'{"a":-9007199254740992}', id="just-past-negative-safe-integer"),
    pytest.param(b'{"a":18446744073709551615}', id="uint64-max"),
    pytest.param(b'{"a":1e+20}', id="integer-beyond-64-bits-as-float"),
    pytest.param('{"\ue000":2,"\U0001f600":1}'.encode(), id="keys-in-code-point-order"),
]


@pytest.mark.parametrize("data", ORJSON_ROUND_TRIPS_BUT_NOT_CANONICAL)
def test_bytes_orjson_round_trips_but_rfc8785_refuses_are_rejected(data: bytes) -> None:
    assert orjson.dumps(orjson.loads(data), option=orjson.OPT_SORT_KEYS) == data

    with pytest.raises(VerificationError):
        parse_canonical(data)


def test_non_ascii_keys_in_utf16_order_are_accepted() -> None:
    data = '{"\U0001f600":1,"\ue000":2}'.encode()

    assert parse_canonical(data) == {"\U0001f600": 1, "\ue000": 2}


def test_safe_integers_at_the_limits_are_accepted() -> None:
    data = b'{"a":9007199254740991,"b":-9007199254740991}'

    assert parse_canonical(data) == {"a": MAX_SAFE_INTEGER, "b": -MAX_SAFE_INTEGER}


def ledger_canonical(document: object) -> bytes | None:
    """The contract, from the reference encoder: JCS bytes, or None where floats or
    unsafe integers make a document unwritable."""

    def writable(value: object) -> bool:
        if isinstance(value, float):
            return False
        if isinstance(value, int) and not isinstance(value, bool):
            return -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER
        if isinstance(value, dict):
            return all(writable(child) for child in value.values())
        if isinstance(value, list):
            return all(writable(child) for child in value)
        return True

    return bytes(rfc8785.dumps(document)) if writable(document) else None


any_numbers = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
any_values = st.recursive(
    any_numbers,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=400)
@given(st.dictionaries(st.text(), any_values, min_size=1, max_size=6))
def test_parse_canonical_accepts_exactly_the_contract_bytes(document: dict[str, object]) -> None:
    expected = ledger_canonical(document)
    candidates = set()
    if expected is not None:
        candidates.add(expected)
    try:
        # The bytes the fast path compares against: they must not slip through.
        candidates.add(orjson.dumps(document, option=orjson.OPT_SORT_KEYS))
    except orjson.JSONEncodeError:
        pass  # an integer beyond 64 bits
    for data in candidates:
        if data == expected:
            assert parse_canonical(data) == orjson.loads(data)
        else:
            with pytest.raises(VerificationError):
                parse_canonical(data)
