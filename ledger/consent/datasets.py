"""Dataset builds and purge obligations as the domain sees them (SPEC §7).

Pure functions: names and record ids, a member's leaf, and `member_course`, which
says whether a dataset member is still eligible at an instant and, if not, since
when and because of which entry. Obligations are a function of the log and the
instant (§7.2): every writer and `verify` ask this one function, so what a write
opens is what `verify` recomputes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, Literal, TypeAlias

from ledger.consent.eligibility import Decision, Eligibility, SubjectState, evaluate_eligibility
from ledger.consent.entries import EntryKind
from ledger.consent.policy import Policy
from ledger.errors import InvalidInput
from ledger.timestamps import format_timestamp, parse_timestamp
from ledger.tlog.canonical import canonical_bytes
from ledger.tlog.merkle import leaf_hash

_NAME: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
MAX_RECORD_ID: Final = 256
# Several categories of one record are stored and hashed sorted, joined by this
# (category names are dot-separated lowercase words: it never occurs in one).
CATEGORY_SEPARATOR: Final = "|"

ObligationStatus: TypeAlias = Literal["open", "fulfilled", "cancelled"]
STATUSES: Final = ("open", "overdue", "fulfilled", "cancelled")
# Why a member stopped being eligible: the §3.4 reason of its answer, or `expired`
# when the decision that allowed it ran out.
EXPIRED: Final = "expired"


def validate_dataset_name(name: object, *, field: str = "dataset") -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput(
            "must be 1 to 128 characters of a-z, 0-9, '.', '_' and '-', starting with a "
            f"letter or digit, got {name!r}",
            field=field,
        )
    return name


def validate_version(version: object, *, field: str = "version") -> str:
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    return validate_dataset_name(version, field=field)


def parse_build(text: str, *, field: str = "NAME@VERSION") -> tuple[str, str]:
    """`posts-train@1` → ("posts-train", "1")."""
    name, at, version = text.partition("@")
    if not at:
        raise InvalidInput(f"expected NAME@VERSION, got {text!r}", field=field)
    return validate_dataset_name(name, field=field), validate_version(version, field=field)


def validate_record_id(record_id: object, *, field: str = "record_id") -> str:
    if isinstance(record_id, int) and not isinstance(record_id, bool):
        record_id = str(record_id)
    if not isinstance(record_id, str):
        raise InvalidInput("must be a string", field=field)
    if not 1 <= len(record_id) <= MAX_RECORD_ID:
        raise InvalidInput(
            f"must be 1 to {MAX_RECORD_ID} characters, got {len(record_id)}", field=field
        )
    return record_id


def record_order(record_id: str) -> bytes:
    """The order of members in a build: UTF-8 byte order of their record ids."""
    return record_id.encode("utf-8")


def leaf_category(categories: Sequence[str]) -> str | list[str]:
    """A member's `category` in its leaf: the name, or the sorted names of several."""
    if len(categories) == 1:
        return categories[0]
    return sorted(categories)


def joined_categories(categories: Sequence[str]) -> str:
    """How a member's categories are stored: sorted, joined by `CATEGORY_SEPARATOR`."""
    return CATEGORY_SEPARATOR.join(sorted(categories))


def split_categories(stored: str) -> list[str]:
    return stored.split(CATEGORY_SEPARATOR)


def member_leaf(record_id: str, subject_ref: str, categories: Sequence[str], purpose: str) -> bytes:
    """The RFC 9162 leaf hash of a member: canonical `{"category","purpose","record","subject"}`."""
    # Vetted: every value is a validated string (or a list of them), every key ASCII.
    return leaf_hash(
        canonical_bytes(
            {
                "category": leaf_category(categories),
                "purpose": purpose,
                "record": record_id,
                "subject": subject_ref,
            },
            vetted=True,
        )
    )


def purged_leaf(record_id: str) -> bytes:
    """A leaf of a purge's `purged_root`: canonical `{"record"}`."""
    return leaf_hash(canonical_bytes({"record": record_id}, vetted=True))


def due_time(cause_time: str, purge_within_days: int) -> str:
    return format_timestamp(parse_timestamp(cause_time) + timedelta(days=purge_within_days))


# --- a member's course over time ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimedEntry:
    """A log entry as the course of a member needs it."""

    seq: int
    time: str
    kind: str
    data: Mapping[str, Any]

    @classmethod
    def of(cls, seq: int, body: Mapping[str, Any]) -> TimedEntry:
        return cls(seq, body["time"], body["kind"], body["data"])


@dataclass(frozen=True, slots=True)
class PublishedPolicy:
    seq: int
    time: str
    policy: Policy


@dataclass(frozen=True, slots=True)
class BuildTerms:
    """What every member of a build shares: it was checked at (`checked_at`, `at`)."""

    purpose: str
    checked_at: int
    at: str


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """A member's answer at an instant; when not eligible, since when and why."""

    eligible: bool
    reason: str | None = None
    cause: int | None = None
    cause_time: str | None = None
    policy: Policy | None = None  # in force at the cause time: its `purge_within` sets `due`


ELIGIBLE: Final = MemberStatus(True)
_SUBJECT_STATE_KINDS: Final = frozenset(
    {EntryKind.SUBJECT_REGISTERED, EntryKind.SUBJECT_UPDATED, EntryKind.SUBJECT_ERASED}
)
_DECIDED: Final = frozenset({"refused", "withdrawn"})


def _known_at(entries: Sequence[TimedEntry], checked_at: int, instant: str) -> Iterable[TimedEntry]:
    # What the ledger knew at `instant`: what the build was checked against, and
    # everything appended by then.
    return (e for e in entries if e.seq < checked_at or e.time <= instant)


def _state_and_decisions(
    entries: Iterable[TimedEntry],
) -> tuple[SubjectState | None, list[Decision]]:
    state: SubjectState | None = None
    decisions: list[Decision] = []
    for entry in entries:
        data = entry.data
        if entry.kind == EntryKind.CONSENT_RECORDED:
            decisions.append(
                Decision(
                    entry.seq,
                    data["category"],
                    data["purpose"],
                    data["decision"],
                    data["explicit"],
                    data["effective"],
                    data["expires"],
                )
            )
        elif entry.kind in _SUBJECT_STATE_KINDS:
            state = SubjectState(
                registered=True,
                erased=entry.kind == EntryKind.SUBJECT_ERASED
                or (state is not None and state.erased),
                minor=data.get("minor", state.minor if state else False),
                jurisdiction=data.get("jurisdiction", state.jurisdiction if state else None),
            )
    return state, decisions


def _answer(
    policies: Sequence[PublishedPolicy],
    subject_entries: Sequence[TimedEntry],
    categories: Sequence[str],
    terms: BuildTerms,
    instant: str,
) -> tuple[Eligibility, Policy, str]:
    """The member's answer at `instant`, the policy then and the category that decides:
    the first that is not eligible, else the last."""
    policy = None
    for published in policies:
        if published.seq < terms.checked_at or published.time <= instant:
            policy = published.policy
    assert policy is not None, "a ledger always has a policy"
    state, decisions = _state_and_decisions(_known_at(subject_entries, terms.checked_at, instant))
    answer = None
    for category in categories:
        answer = evaluate_eligibility(policy, state, decisions, category, terms.purpose, instant)
        if not answer.eligible:
            return answer, policy, category
    assert answer is not None
    return answer, policy, categories[-1]


def member_course(
    policies: Sequence[PublishedPolicy],
    subject_entries: Sequence[TimedEntry],
    categories: Sequence[str],
    terms: BuildTerms,
    now: str,
) -> MemberStatus:
    """Is the member still eligible at `now`? If not, when did it stop and why (§7.2)?

    A member was eligible when its build was checked (at `terms`). Its answer can
    change only at an instant where something the answer depends on changed: an
    entry of its subject or a policy appended, or a decision taking effect or
    expiring. The answer is evaluated at each such instant after the check; the
    last change from eligible to not eligible is the cause. `policies` and
    `subject_entries` are in seq order.
    """
    # An entry appended after the check counts from its time, or from the build's `at`
    # if it is dated before that (a build checked as of an older tree size).
    start = terms.at

    def since(time: str) -> str:
        return time if time > start else start

    instants: set[str] = set()
    for published in policies:
        if published.seq >= terms.checked_at:
            instants.add(since(published.time))
    decisions: dict[int, Mapping[str, Any]] = {}
    for entry in subject_entries:
        if entry.seq >= terms.checked_at:
            instants.add(since(entry.time))
        if entry.kind == EntryKind.CONSENT_RECORDED:
            decisions[entry.seq] = entry.data
            instants.add(entry.data["effective"])
            if entry.data["expires"] is not None:
                instants.add(entry.data["expires"])
    # `start` itself only if something appended since the check counts from it: then the
    # answer at `start` is no longer the one the build was checked to.
    previous = start  # the last instant at which it was eligible
    stopped: tuple[str, str, Eligibility, Policy, str] | None = None
    for instant in sorted(t for t in instants if start <= t <= now):
        answer, policy, category = _answer(policies, subject_entries, categories, terms, instant)
        if answer.eligible:
            previous, stopped = instant, None
        elif stopped is None:
            stopped = (previous, instant, answer, policy, category)
    if stopped is None:
        return ELIGIBLE
    previous, instant, answer, policy, category = stopped
    if answer.reason in _DECIDED:
        return MemberStatus(False, answer.reason, answer.decided_by, instant, policy)
    appended = [p.seq for p in policies if p.seq >= terms.checked_at and since(p.time) == instant]
    appended += [
        e.seq for e in subject_entries if e.seq >= terms.checked_at and since(e.time) == instant
    ]
    if appended:
        return MemberStatus(False, answer.reason, max(appended), instant, policy)
    # Nothing was appended then: the decision that allowed the category now refused
    # ran out (it decided the category's answer at the last instant it was eligible).
    before, _, _ = _answer(policies, subject_entries, [category], terms, previous)
    allowed_by = before.decided_by
    if allowed_by is None or decisions.get(allowed_by, {}).get("expires") != instant:
        allowed_by = _expired_grant(decisions, instant)
    return MemberStatus(False, EXPIRED, allowed_by, instant, policy)


def _expired_grant(decisions: Mapping[int, Mapping[str, Any]], instant: str) -> int | None:
    expired = [
        seq
        for seq, data in decisions.items()
        if data["decision"] == "granted" and data["expires"] == instant
    ]
    return max(expired) if expired else None


def future_instants(subject_entries: Iterable[TimedEntry], now: str) -> set[str]:
    """The instants after `now` at which a subject's answers may change by themselves:
    decisions taking effect or expiring. A sweep looks at the subject again then."""
    found: set[str] = set()
    for entry in subject_entries:
        if entry.kind == EntryKind.CONSENT_RECORDED:
            for instant in (entry.data["effective"], entry.data["expires"]):
                if instant is not None and instant > now:
                    found.add(instant)
    return found
