"""Timestamps as the log writes them: RFC 3339, UTC, `Z`, exactly six fractional digits.

One fixed textual form keeps canonical bytes stable and lets timestamps
compare correctly as strings as well as datetimes: every field has a fixed width,
the year included (0001-9999, the years RFC 3339 and Python's datetime share).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from ledger.errors import InvalidInput


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_timestamp(moment: datetime) -> str:
    """`2026-11-26T18:20:00.123456Z` for any aware datetime."""
    if moment.tzinfo is None:
        raise InvalidInput("timestamp has no time zone")
    utc = moment.astimezone(UTC)
    # Not strftime("%Y"): it writes the year 500 as "500", which is not RFC 3339 and
    # sorts after "2024" as a string, so an old refusal would lose to a newer grant.
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T"
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}.{utc.microsecond:06d}Z"
    )


def parse_timestamp(text: str, *, field: str = "time") -> datetime:
    """Parse any RFC 3339 timestamp with an offset (or `Z`) into an aware UTC datetime."""
    if not isinstance(text, str) or "T" not in text.upper():
        raise InvalidInput(f"expected an RFC 3339 timestamp, got {text!r}", field=field)
    try:
        moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError as exc:
        if text.startswith("0000"):
            raise InvalidInput(
                f"timestamp {text!r} is before the year 0001, the earliest accepted", field=field
            ) from exc
        raise InvalidInput(f"expected an RFC 3339 timestamp, got {text!r}", field=field) from exc
    if moment.tzinfo is None:
        raise InvalidInput(f"timestamp {text!r} has no time zone offset", field=field)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise InvalidInput(f"timestamp {text!r} is out of range in UTC", field=field) from None


# Already UTC with `Z`, at most six fractional digits, a four-digit year: only the fraction
# needs rewriting.
_PLAIN_UTC = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,6}))?Z"
)


def normalize_timestamp(text: str, *, field: str = "time") -> str:
    """Any RFC 3339 timestamp, rewritten in the log's one form."""
    # Imports normalise a timestamp or two per row, nearly all of them in this form:
    # checking the calendar is all they need, not a round trip through strftime.
    plain = _PLAIN_UTC.fullmatch(text) if isinstance(text, str) else None
    if plain is not None:
        seconds, fraction = plain.groups()
        try:
            datetime.fromisoformat(seconds)
        except ValueError:
            pass  # not a real date or time: the full parse says what is wrong
        else:
            return f"{seconds}.{(fraction or '').ljust(6, '0')}Z"
    return format_timestamp(parse_timestamp(text, field=field))
