"""The log's one timestamp form, and the import's shortcut to it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.consent.decisions import DecisionRequest
from ledger.errors import InvalidInput
from ledger.service import ConsentLedger
from ledger.timestamps import format_timestamp, normalize_timestamp, parse_timestamp


def reference(text: str) -> str:
    """The definition: parse, then format. `normalize_timestamp` may only be faster."""
    return format_timestamp(parse_timestamp(text))


def outcome(function: object, text: str) -> str:
    try:
        return function(text)  # type: ignore[operator]
    except InvalidInput:
        return "InvalidInput"


# Years below 1000 are where strftime and a four-digit year part ways.
moments = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(1200, 12, 31)),
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
)


@st.composite
def written(draw: st.DrawFn) -> str:
    """Timestamps as exports write them: every fraction length, offsets, odd cases."""
    moment = draw(moments)
    base = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if draw(st.booleans()):
        base = f"{moment.year:04d}{base[base.index('-') :]}"
    digits = draw(st.integers(min_value=0, max_value=9))
    fraction = f"{moment.microsecond:06d}"[:digits].ljust(digits, "7")
    text = base + (f".{fraction}" if digits else "")
    suffix = draw(st.sampled_from(["Z", "z", "+00:00", "-05:30", "+14:00", ""]))
    text += suffix
    # A few characters changed anywhere: bad days, months, hours, digits that are not ASCII.
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        at = draw(st.integers(min_value=0, max_value=len(text) - 1))
        text = text[:at] + draw(st.sampled_from("0193-:T.Z٣ ")) + text[at + 1 :]
    return text


@given(written())
def test_normalize_agrees_with_parse_then_format(text: str) -> None:
    assert outcome(normalize_timestamp, text) == outcome(reference, text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-10-24T07:45:49Z", "2023-10-24T07:45:49.000000Z"),
        ("2023-10-24T07:45:49.5Z", "2023-10-24T07:45:49.500000Z"),
        ("2023-10-24T07:45:49.123456Z", "2023-10-24T07:45:49.123456Z"),
        ("2023-10-24T09:45:49+02:00", "2023-10-24T07:45:49.000000Z"),
        ("2024-02-29T00:00:00Z", "2024-02-29T00:00:00.000000Z"),
    ],
)
def test_normalize_writes_the_one_form(text: str, expected: str) -> None:
    assert normalize_timestamp(text) == expected


@pytest.mark.parametrize(
    "text",
    ["2023-02-29T00:00:00Z", "2023-10-24T24:00:00Z", "2023-13-01T00:00:00Z", "2023-10-24", "x"],
)
def test_normalize_names_what_is_wrong(text: str) -> None:
    with pytest.raises(InvalidInput, match="RFC 3339"):
        normalize_timestamp(text)


def test_format_needs_a_zone() -> None:
    with pytest.raises(InvalidInput, match="no time zone"):
        format_timestamp(datetime(2026, 1, 1))
    assert format_timestamp(datetime(2026, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))) == (
        format_timestamp(datetime(2026, 1, 1, tzinfo=UTC))
    )


@given(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
)
def test_stored_timestamps_order_as_their_instants(first: datetime, second: datetime) -> None:
    # Eligibility compares stored timestamps as strings: that must be comparing instants.
    a, b = first.replace(tzinfo=UTC), second.replace(tzinfo=UTC)
    assert (format_timestamp(a) < format_timestamp(b)) == (a < b)
    assert len(format_timestamp(a)) == len("2026-01-01T00:00:00.000000Z")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0500-01-01T00:00:00Z", "0500-01-01T00:00:00.000000Z"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000000Z"),
        ("0999-12-31T23:00:00-00:30", "0999-12-31T23:30:00.000000Z"),
    ],
)
def test_years_before_1000_keep_four_digits(text: str, expected: str) -> None:
    assert normalize_timestamp(text) == expected
    assert reference(text) == expected


def test_year_zero_is_refused_by_name() -> None:
    with pytest.raises(InvalidInput, match="before the year 0001"):
        normalize_timestamp("0000-06-01T00:00:00Z", field="effective")


def test_a_refusal_dated_before_1000_is_applied(ledger: ConsentLedger) -> None:
    # Stored as "500-01-01…", it sorted after every modern time and was never in force.
    ledger.register_subject("y500", jurisdiction="US", actor="test")
    assert ledger.check("y500", "profile").reason == "default-allow"
    refusal = DecisionRequest(
        category="*", purpose="*", decision="denied", effective="0500-01-01T00:00:00Z"
    )
    sealed = ledger.record_consents("y500", [refusal], actor="test")
    assert sealed.entries[0].data["effective"] == "0500-01-01T00:00:00.000000Z"
    answer = ledger.check("y500", "profile")
    assert (answer.eligible, answer.reason) == (False, "refused")


def test_an_expiry_before_1000_is_not_later_than_a_modern_effective(
    ledger: ConsentLedger,
) -> None:
    ledger.register_subject("y999", jurisdiction="US", actor="test")
    grant = DecisionRequest(
        category="profile",
        decision="granted",
        effective="2024-01-01T00:00:00Z",
        expires="0999-01-01T00:00:00Z",
    )
    with pytest.raises(InvalidInput, match="must be later than effective"):
        ledger.record_consents("y999", [grant], actor="test")
    assert ledger.check("y999", "profile", at="0001-01-01T00:00:00Z").at == (
        "0001-01-01T00:00:00.000000Z"
    )
