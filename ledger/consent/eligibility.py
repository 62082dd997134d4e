"""Eligibility (SPEC §3.4): may this subject's data in this category be used for this purpose?

A pure function of the policy, the subject's state and their decisions, so
that the same log prefix and the same `at` always give the same answer. The
caller has already picked the subject's decisions with `seq < as_of` and
validated the category and purpose against the policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Literal, NamedTuple, TypeAlias, TypeVar

from ledger.consent.policy import WILDCARD, Policy, ancestors

DecisionKind: TypeAlias = Literal["granted", "denied", "withdrawn"]
Reason: TypeAlias = Literal[
    "unknown-subject",
    "erased",
    "prohibited",
    "minor",
    "consent",
    "refused",
    "withdrawn",
    "explicit-consent-required",
    "default-allow",
    "default-deny",
]

REASONS: Final[tuple[Reason, ...]] = (
    "unknown-subject",
    "erased",
    "prohibited",
    "minor",
    "consent",
    "refused",
    "withdrawn",
    "explicit-consent-required",
    "default-allow",
    "default-deny",
)


@dataclass(frozen=True, slots=True)
class Decision:
    """One recorded consent decision (`consent.recorded`), as eligibility needs it.

    `effective` and `expires` are in the log's one timestamp form
    (`2026-11-26T18:20:00.123456Z`), so they compare correctly as strings.
    """

    seq: int
    category: str
    purpose: str
    decision: DecisionKind
    explicit: bool
    effective: str
    expires: str | None


@dataclass(frozen=True, slots=True)
class SubjectState:
    """What the ledger knows about a subject as of the log prefix being evaluated."""

    registered: bool
    erased: bool
    minor: bool
    jurisdiction: str | None


class Eligibility(NamedTuple):
    """The answer: `decided_by` is the seq of the deciding decision, if one decided.

    A named tuple rather than a frozen dataclass: batches build one per item, and
    a frozen dataclass's `__init__` costs several times more.
    """

    eligible: bool
    reason: Reason
    decided_by: int | None


# The answers that do not depend on a decision are shared, not rebuilt per call.
_UNKNOWN_SUBJECT: Final = Eligibility(False, "unknown-subject", None)
_ERASED: Final = Eligibility(False, "erased", None)
_PROHIBITED: Final = Eligibility(False, "prohibited", None)
_MINOR: Final = Eligibility(False, "minor", None)
_EXPLICIT_REQUIRED: Final = Eligibility(False, "explicit-consent-required", None)
_DEFAULT_ALLOW: Final = Eligibility(True, "default-allow", None)
_DEFAULT_DENY: Final = Eligibility(False, "default-deny", None)

_new_tuple = tuple.__new__
_OUTCOME: Final[dict[DecisionKind, tuple[bool, Reason]]] = {
    "granted": (True, "consent"),
    "denied": (False, "refused"),
    "withdrawn": (False, "withdrawn"),
}


@lru_cache(maxsize=4096)
def _covering(name: str) -> frozenset[str]:
    # The decision names that speak for `name`: itself, its ancestors and `*`.
    return frozenset((*ancestors(name), WILDCARD))


class PairRules(NamedTuple):
    """What the policy says about a (category, purpose) pair before any subject is known."""

    prohibited: bool
    special: bool
    categories: frozenset[str]  # decision categories that speak for the category
    purposes: frozenset[str]  # likewise for the purpose


def pair_rules(policy: Policy, category: str, purpose: str) -> PairRules:
    return PairRules(
        policy.is_prohibited(category, purpose),
        policy.is_special(category),
        _covering(category),
        _covering(purpose),
    )


def evaluate_eligibility(
    policy: Policy,
    subject: SubjectState | None,
    decisions: Iterable[Decision],
    category: str,
    purpose: str,
    at: str,
) -> Eligibility:
    """Apply SPEC §3.4: the first rule that applies decides.

    `subject` is None for a subject never registered; `at` is a timestamp in
    the log's form.
    """
    return decide(
        policy, pair_rules(policy, category, purpose), subject, decisions, category, purpose, at
    )


def eligibility_matrix(
    policy: Policy, subject: SubjectState | None, decisions: Sequence[Decision], at: str
) -> list[dict[str, object]]:
    """The answer for every category × purpose of the policy: what a subject view shows
    and what a subject report states (and `verify-report` recomputes)."""
    return [
        {
            "category": category,
            "purpose": purpose,
            "eligible": answer.eligible,
            "reason": answer.reason,
            "decided_by": answer.decided_by,
        }
        for category in policy.categories
        for purpose in policy.purposes
        for answer in (evaluate_eligibility(policy, subject, decisions, category, purpose, at),)
    ]


ItemError = TypeVar("ItemError", bound=Exception)


class BatchEvaluator:
    """`evaluate_eligibility` for many checks under one policy at one time.

    The policy's part of the answer (rules 3 and 6, and which decision names
    apply) is worked out once per distinct (category, purpose), not per check.
    """

    __slots__ = ("_at", "_policy", "_rules")

    def __init__(self, policy: Policy, at: str) -> None:
        self._policy = policy
        self._at = at
        self._rules: dict[tuple[str, str], PairRules] = {}

    def evaluate(
        self,
        subject: SubjectState | None,
        decisions: Iterable[Decision],
        category: str,
        purpose: str,
    ) -> Eligibility:
        rules = self._rules.get((category, purpose))
        if rules is None:
            rules = self._rules[category, purpose] = pair_rules(self._policy, category, purpose)
        return decide(self._policy, rules, subject, decisions, category, purpose, self._at)

    def evaluate_all(
        self,
        items: Sequence[tuple[str, str, str] | ItemError],
        states: Mapping[str, SubjectState],
        decisions: Mapping[str, Sequence[Decision]],
    ) -> list[Eligibility | ItemError]:
        """Answers to (subject_id, category, purpose) items, in order.

        Items that are exceptions (the caller's per-item errors) are passed through.
        """
        policy, at, rules_of = self._policy, self._at, self._rules
        state_of, decisions_of = states.get, decisions.get
        no_decisions: tuple[Decision, ...] = ()
        results: list[Eligibility | ItemError] = []
        append = results.append
        for item in items:
            if isinstance(item, Exception):
                append(item)
                continue
            subject_id, category, purpose = item
            rules = rules_of.get((category, purpose))
            if rules is None:
                rules = rules_of[category, purpose] = pair_rules(policy, category, purpose)
            append(
                decide(
                    policy,
                    rules,
                    state_of(subject_id),
                    decisions_of(subject_id, no_decisions),
                    category,
                    purpose,
                    at,
                )
            )
        return results


def decide(
    policy: Policy,
    rules: PairRules,
    subject: SubjectState | None,
    decisions: Iterable[Decision],
    category: str,
    purpose: str,
    at: str,
) -> Eligibility:
    """SPEC §3.4 given the pair's `rules` (from `pair_rules(policy, category, purpose)`)."""
    # 1. Never registered.
    if subject is None or not subject.registered:
        return _UNKNOWN_SUBJECT
    # 2. Erased: nothing of theirs is ever eligible again.
    if subject.erased:
        return _ERASED
    # 3. Prohibited whatever the consent.
    if rules.prohibited:
        return _PROHIBITED
    # 4. Minors, unless the policy says otherwise.
    if subject.minor and not policy.minors_eligible:
        return _MINOR

    # 5. The latest applicable decision by (effective, seq). One pass keeping
    # the maximum: decisions arrive in any order and sorting is wasted work.
    special = rules.special
    categories = rules.categories
    purposes = rules.purposes
    latest: Decision | None = None
    for decision in decisions:
        if decision.category not in categories or decision.purpose not in purposes:
            continue
        if decision.effective > at:
            continue
        if decision.expires is not None and at >= decision.expires:
            continue
        # A non-explicit grant cannot make a special category eligible, so it
        # must not hide an earlier explicit grant or denial either.
        if special and decision.decision == "granted" and not decision.explicit:
            continue
        if (
            latest is None
            or decision.effective > latest.effective
            or (decision.effective == latest.effective and decision.seq > latest.seq)
        ):
            latest = decision
    if latest is not None:
        # tuple.__new__ skips the named tuple's Python-level __new__: this line
        # runs once per decided check in a batch.
        return _new_tuple(Eligibility, (*_OUTCOME[latest.decision], latest.seq))

    # 6. Special categories are opt-in, explicitly, everywhere.
    if special:
        return _EXPLICIT_REQUIRED
    # 7. The regime's default.
    regime = policy.regime_of(subject.jurisdiction)
    if policy.default_for(regime, category, purpose) == "allow":
        return _DEFAULT_ALLOW
    return _DEFAULT_DENY
