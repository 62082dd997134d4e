"""Canonical bytes: the orjson fast path must agree with the RFC 8785 reference."""

from __future__ import annotations

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.canonical import MAX_SAFE_INTEGER, canonical_bytes, parse_canonical
from ledger.errors import InvalidInput, VerificationError

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
