"""The import format: the fields a row may have, the spellings of field names and
decisions that exports use for ours, and how a field's text is read."""

from __future__ import annotations

from typing import Any

from ledger.errors import InvalidInput

FIELDS = (
    "subject_id",
    "jurisdiction",
    "minor",
    "category",
    "purpose",
    "decision",
    "explicit",
    "effective",
    "expires",
    "method",
    "notice",
)
# The spellings people actually use in exports, mapped onto ours.
FIELD_ALIASES = {
    "subject": "subject_id",
    "subjectid": "subject_id",
    "user_id": "subject_id",
    "userid": "subject_id",
    "user": "subject_id",
    "id": "subject_id",
    "country": "jurisdiction",
    "is_minor": "minor",
    "data_category": "category",
    "consent": "decision",
    "status": "decision",
    "effective_at": "effective",
    "expires_at": "expires",
    "notice_version": "notice",
}
DECISION_ALIASES = {
    "granted": "granted",
    "grant": "granted",
    "denied": "denied",
    "deny": "denied",
    "refused": "denied",
    "withdrawn": "withdrawn",
    "withdraw": "withdrawn",
}
_TRUE = {"true", "yes", "y", "1", "t"}
_FALSE = {"false", "no", "n", "0", "f"}
DEFAULT_METHOD = "import"


def field_name(name: str | None) -> str:
    """A column's name as one of `FIELDS` if it is a known spelling of one."""
    key = (name or "").strip().lower().replace("-", "_").replace(" ", "_")
    return FIELD_ALIASES.get(key, key)


def is_blank(value: Any) -> bool:
    # `not value.strip()` without building the stripped copy.
    return value is None or (isinstance(value, str) and (not value or value.isspace()))


def parse_boolean(value: Any, name: str) -> bool | None:
    """A true/false field's value; None if blank."""
    if is_blank(value):
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidInput(f"expected true or false, got {value!r}", field=name)
