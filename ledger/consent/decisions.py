"""Consent decisions as callers submit them, validated into `consent.recorded` data."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

from ledger.consent.policy import Policy
from ledger.errors import InvalidInput
from ledger.timestamps import normalize_timestamp

DecisionValue = Literal["granted", "denied", "withdrawn"]
DECISIONS: tuple[str, ...] = get_args(DecisionValue)
DEFAULT_PURPOSE = "ai-training"
MAX_NOTICE = 512
_METHOD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")


@dataclass(frozen=True, slots=True)
class DecisionRequest:
    """One decision as a caller states it; every field still unvalidated."""

    category: object
    decision: object
    purpose: object = DEFAULT_PURPOSE
    explicit: object = False
    method: object = "api"
    notice: object = None
    effective: object = None
    expires: object = None


class ConsentTerms(NamedTuple):
    """A validated decision: the data of a `consent.recorded` entry but its subject."""

    category: str
    purpose: str
    decision: str
    explicit: bool
    method: str
    notice: str | None
    effective: str
    expires: str | None


def validate_decision(
    request: DecisionRequest, policy: Policy, *, now: str, field: str = "decision"
) -> ConsentTerms:
    """The terms of a `consent.recorded` entry for a request, or InvalidInput."""
    if request.decision not in DECISIONS:
        raise InvalidInput(
            f"must be one of {', '.join(DECISIONS)}, got {request.decision!r}",
            field=f"{field}.decision",
        )
    if not isinstance(request.category, str):
        raise InvalidInput("must be a string", field=f"{field}.category")
    category = policy.check_category(
        request.category, field=f"{field}.category", allow_wildcard=True
    )
    purpose_value = DEFAULT_PURPOSE if request.purpose is None else request.purpose
    if not isinstance(purpose_value, str):
        raise InvalidInput("must be a string", field=f"{field}.purpose")
    purpose = policy.check_purpose(purpose_value, field=f"{field}.purpose", allow_wildcard=True)
    if not isinstance(request.explicit, bool):
        raise InvalidInput("must be true or false", field=f"{field}.explicit")
    if not isinstance(request.method, str) or not _METHOD.match(request.method):
        raise InvalidInput(
            "must be 1-64 characters: letters, digits and . _ : / -", field=f"{field}.method"
        )
    notice = request.notice
    if notice is not None and (not isinstance(notice, str) or not 1 <= len(notice) <= MAX_NOTICE):
        raise InvalidInput(
            f"must be null or a string of 1-{MAX_NOTICE} characters", field=f"{field}.notice"
        )
    if notice is not None and not notice.isprintable():
        raise InvalidInput("must not contain control characters", field=f"{field}.notice")
    effective = (
        now
        if request.effective is None
        else normalize_timestamp(
            _text(request.effective, f"{field}.effective"), field=f"{field}.effective"
        )
    )
    expires = None
    if request.expires is not None:
        expires = normalize_timestamp(
            _text(request.expires, f"{field}.expires"), field=f"{field}.expires"
        )
        check_expires(effective, expires, field=f"{field}.expires")
    return ConsentTerms(
        category=category,
        purpose=purpose,
        decision=str(request.decision),
        explicit=request.explicit,
        method=request.method,
        notice=notice,
        effective=effective,
        expires=expires,
    )


def check_expires(effective: str, expires: str | None, *, field: str) -> None:
    """Refuse terms that expire before they take effect (InvalidInput naming `field`)."""
    if expires is not None and expires <= effective:
        raise InvalidInput(f"must be later than effective ({effective})", field=field)


def _text(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput("must be an RFC 3339 timestamp string", field=field)
    return value
