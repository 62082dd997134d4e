"""What an entry changes (SPEC §8): the pairs whose eligibility it turned, for the change feed.

An entry's *effect* is the list of (category, purpose) pairs of the policy in force
whose answer to "eligible?" differs between the log before the entry and the log
with it, evaluated at one instant with the same §3.4 function as checks
(`ledger.consent.eligibility.decide`). Because every effect of a run of entries is
taken at one instant, applying them in order to a cache of answers built before
the run gives the answers after it. The feed takes each entry's effect at the
entry's own time: what changes later by itself (a decision taking effect on a
future date, or expiring) is in the entry's data, not in a later entry.

A policy's effect names the pairs whose rules (prohibited, special, the default
in any jurisdiction, minors) differ from the previous policy's: it concerns every
subject at once, so it carries no answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple

from ledger.consent.eligibility import (
    Decision,
    Eligibility,
    PairRules,
    SubjectState,
    decide,
    pair_rules,
)
from ledger.consent.policy import DEFAULT_REGIME, UNKNOWN_REGIME, Policy

Pair = tuple[str, str]


class PairEffect(NamedTuple):
    """A pair whose eligibility an entry changed, and its answer after the entry."""

    category: str
    purpose: str
    eligible: bool
    reason: str

    def to_json(self) -> dict[str, object]:
        return {
            "category": self.category,
            "purpose": self.purpose,
            "eligible": self.eligible,
            "reason": self.reason,
        }


_NO_EFFECT: Final[tuple[PairEffect, ...]] = ()


class EffectEvaluator:
    """Effects of subject entries under one policy: its pairs and their rules, worked out once."""

    __slots__ = ("_pairs", "_policy", "_scoped", "_undecided")

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._pairs: tuple[tuple[str, str, PairRules], ...] = tuple(
            (category, purpose, pair_rules(policy, category, purpose))
            for category in policy.categories
            for purpose in policy.purposes
        )
        self._scoped: dict[Pair, tuple[tuple[str, str, PairRules], ...]] = {}
        # The answers of a subject without decisions depend only on its state: registrations
        # share them.
        self._undecided: dict[SubjectState | None, tuple[Eligibility, ...]] = {}

    @property
    def policy(self) -> Policy:
        return self._policy

    def _in_scope(self, category: str, purpose: str) -> tuple[tuple[str, str, PairRules], ...]:
        # The pairs a decision on (category, purpose) can speak for: itself, its descendants,
        # everything under `*`.
        scoped = self._scoped.get((category, purpose))
        if scoped is None:
            scoped = self._scoped[category, purpose] = tuple(
                pair
                for pair in self._pairs
                if category in pair[2].categories and purpose in pair[2].purposes
            )
        return scoped

    def answers(
        self, state: SubjectState | None, decisions: Sequence[Decision], at: str
    ) -> tuple[Eligibility, ...]:
        """The answer for every pair of the policy, in `policy.categories` × `purposes` order."""
        if not decisions:
            shared = self._undecided.get(state)
            if shared is None:
                shared = self._undecided[state] = self._answers(state, decisions, at)
            return shared
        return self._answers(state, decisions, at)

    def _answers(
        self, state: SubjectState | None, decisions: Sequence[Decision], at: str
    ) -> tuple[Eligibility, ...]:
        policy = self._policy
        return tuple(
            decide(policy, rules, state, decisions, category, purpose, at)
            for category, purpose, rules in self._pairs
        )

    def decision_effect(
        self,
        state: SubjectState | None,
        before: Sequence[Decision],
        decision: Decision,
        at: str,
    ) -> tuple[PairEffect, ...]:
        """The effect of recording `decision` for a subject in `state` with decisions `before`."""
        if state is None or not state.registered or state.erased:
            return _NO_EFFECT  # rules 1 and 2 answer whatever the decisions say
        if decision.effective > at or (decision.expires is not None and at >= decision.expires):
            return _NO_EFFECT  # not in force at `at`: it cannot decide anything yet
        policy = self._policy
        after = [*before, decision]
        changed = []
        for category, purpose, rules in self._in_scope(decision.category, decision.purpose):
            old = decide(policy, rules, state, before, category, purpose, at)
            new = decide(policy, rules, state, after, category, purpose, at)
            if old.eligible != new.eligible:
                changed.append(PairEffect(category, purpose, new.eligible, new.reason))
        return tuple(changed)

    def state_effect(
        self,
        old_state: SubjectState | None,
        new_state: SubjectState,
        decisions: Sequence[Decision],
        at: str,
    ) -> tuple[PairEffect, ...]:
        """The effect of a subject's registration, update or erasure (`decisions` unchanged)."""
        old = self.answers(old_state, decisions, at)
        new = self.answers(new_state, decisions, at)
        return tuple(
            PairEffect(category, purpose, after.eligible, after.reason)
            for (category, purpose, _), before, after in zip(self._pairs, old, new, strict=True)
            if before.eligible != after.eligible
        )


def _pair_rules_signature(
    policy: Policy, category: str, purpose: str, countries: Sequence[str]
) -> tuple[object, ...]:
    # The default in every regime a subject can fall into: each listed country's, any
    # other country's (`default`) and that of a subject without one (`unknown`).
    regimes = [*(policy.regime_of(country) for country in countries), DEFAULT_REGIME]
    regimes.append(UNKNOWN_REGIME)
    return (
        policy.is_prohibited(category, purpose),
        policy.is_special(category),
        policy.minors_eligible,
        tuple(policy.default_for(regime, category, purpose) for regime in regimes),
    )


def policy_effect(previous: Policy | None, policy: Policy) -> tuple[Pair, ...]:
    """The pairs whose rules `policy` changes from `previous` (all of them for the first
    policy, and the pairs either one has that the other has not)."""
    pairs = [(c, p) for c in policy.categories for p in policy.purposes]
    if previous is None:
        return tuple(pairs)
    old_pairs = [(c, p) for c in previous.categories for p in previous.purposes]
    countries = sorted(
        {code for codes in previous.regimes.values() for code in codes}
        | {code for codes in policy.regimes.values() for code in codes}
    )
    old_set, new_set = set(old_pairs), set(pairs)
    changed = [pair for pair in old_pairs if pair not in new_set]
    for pair in pairs:
        if pair not in old_set or _pair_rules_signature(
            previous, *pair, countries
        ) != _pair_rules_signature(policy, *pair, countries):
            changed.append(pair)
    return tuple(changed)
