"""What the ledger's checks and subject reads answer with: plain values that carry their own JSON.

The API, the CLI and the reports render these with `to_json`, so each answer has one shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from ledger.consent.eligibility import Decision, Eligibility
from ledger.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class EligibilityAnswer:
    """One check's answer, with the tree size, time and policy it was evaluated at."""

    eligible: bool
    reason: str
    decided_by: int | None
    policy_version: int
    checked_at: int
    at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "eligible": self.eligible,
            "reason": self.reason,
            "decided_by": self.decided_by,
            "policy_version": self.policy_version,
            "checked_at": self.checked_at,
            "at": self.at,
        }


class CheckRequest(NamedTuple):
    """One check as the caller sent it; `check_many` validates every field.

    A named tuple so that callers holding many can pass plain 3-tuples.
    """

    subject_id: object
    category: object
    purpose: object = None


CheckItem = tuple[object, object, object]


@dataclass(frozen=True, slots=True)
class CheckBatch:
    """Answers for many checks evaluated at one tree size, one time and one policy."""

    checked_at: int
    at: str
    policy_version: int
    checkpoint: str
    results: list[Eligibility | InvalidInput]
    # With `check_many(with_subjects=True)`: registered subjects' refs and decisions.
    refs: dict[str, str] | None = None
    decisions: dict[str, list[Decision]] | None = None


@dataclass(frozen=True, slots=True)
class SubjectView:
    """A subject's attributes, decisions and eligibility for every category × purpose."""

    subject_id: str
    ref: str
    jurisdiction: str | None
    minor: bool
    regime: str
    registered_seq: int
    decisions: list[dict[str, Any]]
    eligibility: list[dict[str, Any]]
    checked_at: int
    policy_version: int
    at: str

    def to_json(self, *, with_ref: bool = True) -> dict[str, Any]:
        """The view as JSON; `with_ref=False` leaves out the log's reference for the subject.

        The HTTP answer has never carried the ref (the CLI's has): kept so, to change no
        answer, until someone decides they should agree.
        """
        out: dict[str, Any] = {"subject_id": self.subject_id}
        if with_ref:
            out["subject"] = self.ref
        out.update(
            jurisdiction=self.jurisdiction,
            minor=self.minor,
            regime=self.regime,
            registered_seq=self.registered_seq,
            decisions=self.decisions,
            eligibility=self.eligibility,
            checked_at=self.checked_at,
            policy_version=self.policy_version,
            at=self.at,
        )
        return out
