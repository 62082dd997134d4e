"""The import's row validation: `RowValidator` (what `import` runs, with each repeated
combination of fields validated once) must accept exactly the rows `parse_record` accepts,
with the same fields, and reject the others with its very error.

No database: this is validation alone (the import's own tests cover the writing).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.consent.policy import default_policy
from ledger.errors import InvalidInput
from ledger.importing import validation
from ledger.importing.fields import FIELDS
from ledger.importing.rows import parse_record
from ledger.importing.validation import RowValidator, spool_fields

POLICY = default_policy()
NOW = "2026-12-01T12:00:00.000000Z"
CATEGORIES = sorted(POLICY.category_nodes)
PURPOSES = sorted(POLICY.purpose_nodes)

# One validator for every example: its memo then holds shapes from earlier rows, as
# it does half-way through a file.
SHARED = RowValidator(POLICY)


def blank() -> st.SearchStrategy[Any]:
    return st.sampled_from(["", " ", "\t", None])


def text_or(values: list[str]) -> st.SearchStrategy[Any]:
    """Mostly good values, written the ways exports write them; sometimes anything."""
    good = st.sampled_from(values)
    return st.one_of(
        good,
        good.map(lambda value: f" {value} "),
        good.map(str.upper),
        blank(),
        st.text(max_size=6),
        st.sampled_from([True, False, 1, 0.5, ["x"], {"a": 1}]),
    )


times = st.one_of(
    st.sampled_from(
        [
            "2023-10-24T07:45:49Z",
            "2023-10-24T07:45:49.5Z",
            "2031-01-01T00:00:00Z",
            "2023-10-24T09:45:49+02:00",
            "2023-02-29T00:00:00Z",
            "2020-01-01t00:00:00z",
            "0999-01-01T00:00:00Z",
            " 2024-06-01T00:00:00Z ",
            "2026-12-01T12:00:00Z",
            "yesterday",
        ]
    ),
    blank(),
    st.datetimes().map(lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")),
)

COLUMNS = {
    "subject_id": text_or(["user-1", "user-2", "ü-3", "a\u0007b", "x" * 257]),
    "jurisdiction": text_or(["DE", "us", "BR", "XX", "ZZ"]),
    "minor": text_or(["true", "false", "yes", "0", "maybe"]),
    "category": text_or([*CATEGORIES, "*", "content", "dms"]),
    "purpose": text_or([*PURPOSES, "*", "ai-training.generative", "marketing"]),
    "decision": text_or(["granted", "denied", "withdrawn", "grant", "refused", "maybe"]),
    "explicit": text_or(["true", "false", "y", "n", "1", "nope"]),
    "effective": times,
    "expires": times,
    "method": text_or(["web-form", "mobile-app", "import", "bad method", "x" * 65]),
    "notice": text_or(["ai-addendum-v2", "v1", "x" * 513, "bell\u0007"]),
}
rows = st.fixed_dictionaries(COLUMNS, optional={"_row_id": st.just("7"), "colour": st.just("red")})


def reference(line: int, raw: dict[str, Any]) -> list[Any] | tuple[str, str | None]:
    try:
        return spool_fields(parse_record(line, raw, POLICY, now=NOW))
    except InvalidInput as exc:
        return str(exc.args[0]), exc.field


def validated(
    validator: RowValidator, line: int, raw: dict[str, Any]
) -> list[Any] | tuple[str, str | None]:
    try:
        return validator.spool_fields(line, raw, NOW)
    except InvalidInput as exc:
        return str(exc.args[0]), exc.field


@settings(max_examples=400)
@given(rows, st.booleans())
def test_row_validator_agrees_with_parse_record(raw: dict[str, Any], fresh: bool) -> None:
    validator = RowValidator(POLICY) if fresh else SHARED
    # The same row twice: the second time its shape comes from the memo.
    assert validated(validator, 3, raw) == reference(3, raw)
    assert validated(validator, 4, raw) == reference(4, raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"subject_id": " user-1 ", "jurisdiction": "de", "minor": "yes"},
            [2, "user-1", "DE", True, True],
        ),
        (
            {
                "subject_id": "user-1",
                "category": "profile",
                "decision": "grant",
                "effective": "2023-10-24T07:45:49Z",
            },
            [2, "user-1", None, False, None]
            + ["profile", "ai-training", "granted", False, "import", None]
            + ["2023-10-24T07:45:49.000000Z", None],
        ),
    ],
)
def test_plain_rows_become_spool_fields(raw: dict[str, Any], expected: list[Any]) -> None:
    assert RowValidator(POLICY).spool_fields(2, raw, NOW) == expected


def test_a_file_of_distinct_notices_does_not_grow_the_memo_without_bound() -> None:
    validator = RowValidator(POLICY)
    for number in range(validation._MAX_SHAPES + 100):
        validator.spool_fields(
            number,
            {
                "subject_id": "u",
                "category": "profile",
                "decision": "denied",
                "notice": f"n{number}",
            },
            NOW,
        )
    assert len(validator._shapes) <= validation._MAX_SHAPES


def test_fields_are_the_documented_columns() -> None:
    assert set(FIELDS) == set(COLUMNS)
