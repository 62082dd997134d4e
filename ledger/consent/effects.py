"""What an entry changes (SPEC §8): the pairs whose eligibility it turned, for the change feed.

An entry's *effect* is the list of (category, purpose) pairs of the policy in force
whose answer to "eligible?" differs between the log before the entry and the log
with it, evaluated at one instant with the same §3.4 function as checks
(`ledger.consent.eligibility.decide`). Because every effect of a run of entries is
taken at one instant, applying them in order to a cache of answers built before
the run gives the answers after it. The feed takes each entry's effect at the
entry's own time, or for a decision dated later than its entry at the instant it
takes effect (no later entry will announce it); an expiry changes answers with no
entry at all, so a cache schedules it from the decision's `expires`.

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
_REASON: Final = {"granted": "consent", "denied": "refused", "withdrawn": "withdrawn"}


class EffectEvaluator:
    """Effects of subject entries under one policy: its pairs and their rules, worked out once."""

    __slots__ = ("_pairs", "_policy", "_scoped", "_state_effects", "_undecided")

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
        self._state_effects: dict[
            tuple[SubjectState | None, SubjectState], tuple[PairEffect, ...]
        ] = {}

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
        """The effect of recording `decision` for a subject in `state` with decisions `before`.

        Equal to comparing `decide` with and without it, pair by pair, in one pass: the
        new decision changes a pair's answer only if it is the pair's latest applicable
        decision after it and says otherwise than the answer before it.
        """
        if state is None or not state.registered or state.erased:
            return _NO_EFFECT  # rules 1 and 2 answer whatever the decisions say
        policy = self._policy
        if state.minor and not policy.minors_eligible:
            return _NO_EFFECT  # rule 4, whatever the decisions say
        effective, seq = decision.effective, decision.seq
        if effective > at or (decision.expires is not None and at >= decision.expires):
            return _NO_EFFECT  # not in force at `at`: it decides nothing yet
        granted = decision.decision == "granted"
        regime = policy.regime_of(state.jurisdiction)
        changed: list[PairEffect] = []
        for category, purpose, rules in self._in_scope(decision.category, decision.purpose):
            if rules.prohibited:
                continue  # rule 3
            special = rules.special
            if special and granted and not decision.explicit:
                continue  # a non-explicit grant cannot decide a special category
            categories, purposes = rules.categories, rules.purposes
            latest: Decision | None = None
            for other in before:
                if other.category not in categories or other.purpose not in purposes:
                    continue
                if other.effective > at or (other.expires is not None and at >= other.expires):
                    continue
                if special and other.decision == "granted" and not other.explicit:
                    continue
                if (
                    latest is None
                    or other.effective > latest.effective
                    or (other.effective == latest.effective and other.seq > latest.seq)
                ):
                    latest = other
            if latest is not None:
                if latest.effective > effective or (
                    latest.effective == effective and latest.seq > seq
                ):
                    continue  # an applicable decision later than this one still decides
                was_eligible = latest.decision == "granted"
            elif special:
                was_eligible = False  # rule 6
            else:
                was_eligible = policy.default_for(regime, category, purpose) == "allow"
            if was_eligible != granted:
                changed.append(PairEffect(category, purpose, granted, _REASON[decision.decision]))
        return tuple(changed)

    def state_effect(
        self,
        old_state: SubjectState | None,
        new_state: SubjectState,
        decisions: Sequence[Decision],
        at: str,
    ) -> tuple[PairEffect, ...]:
        """The effect of a subject's registration, update or erasure (`decisions` unchanged)."""
        if not decisions:
            # A registration, mostly: the same few states over and over.
            known = self._state_effects.get((old_state, new_state))
            if known is None:
                known = self._state_effects[old_state, new_state] = self._state_effect(
                    old_state, new_state, decisions, at
                )
            return known
        return self._state_effect(old_state, new_state, decisions, at)

    def _state_effect(
        self,
        old_state: SubjectState | None,
        new_state: SubjectState,
        decisions: Sequence[Decision],
        at: str,
    ) -> tuple[PairEffect, ...]:
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
