"""SPEC §3.4: every eligibility rule, and the order in which they apply."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.consent.eligibility import (
    REASONS,
    BatchEvaluator,
    Decision,
    DecisionKind,
    Eligibility,
    SubjectState,
    evaluate_eligibility,
)
from ledger.consent.policy import Policy, ancestors, default_policy


def ts(day: int, micro: int = 0) -> str:
    """A timestamp in the log's one form, `day` days into 2026."""
    return f"2026-01-{day:02d}T00:00:00.{micro:06d}Z"


NOW = ts(20)


def d(
    seq: int,
    decision: DecisionKind = "granted",
    category: str = "content.public",
    purpose: str = "ai-training",
    *,
    explicit: bool = False,
    effective: str | None = None,
    expires: str | None = None,
) -> Decision:
    return Decision(
        seq=seq,
        category=category,
        purpose=purpose,
        decision=decision,
        explicit=explicit,
        effective=effective or ts(1 + seq % 10),
        expires=expires,
    )


def subject(
    jurisdiction: str | None = "US",
    *,
    registered: bool = True,
    erased: bool = False,
    minor: bool = False,
) -> SubjectState:
    return SubjectState(
        registered=registered, erased=erased, minor=minor, jurisdiction=jurisdiction
    )


US = subject("US")
DE = subject("DE")

GRANT_PUBLIC = [d(1, "granted")]

CASES = [
    # 1. unknown subject beats everything
    pytest.param(None, GRANT_PUBLIC, "content.public", "ai-training", NOW,
                 (False, "unknown-subject", None), id="1-never-registered"),
    pytest.param(subject(registered=False), GRANT_PUBLIC, "content.public", "ai-training", NOW,
                 (False, "unknown-subject", None), id="1-not-registered-state"),
    pytest.param(subject(registered=False, erased=True, minor=True), [],
                 "content.private", "ai-training", NOW,
                 (False, "unknown-subject", None), id="1-beats-erased-prohibited-minor"),
    # 2. erased
    pytest.param(subject(erased=True), GRANT_PUBLIC, "content.public", "ai-training", NOW,
                 (False, "erased", None), id="2-erased-beats-grant"),
    pytest.param(subject(erased=True), [], "content.private", "ai-training", NOW,
                 (False, "erased", None), id="2-erased-beats-prohibited"),
    pytest.param(subject(erased=True, minor=True), [], "content.public", "ai-training", NOW,
                 (False, "erased", None), id="2-erased-beats-minor"),
    # 3. prohibited
    pytest.param(US, [d(1, "granted", "content.private.messages", explicit=True)],
                 "content.private.messages", "ai-training", NOW,
                 (False, "prohibited", None), id="3-prohibited-beats-explicit-grant"),
    pytest.param(US, [d(1, "granted", "*", "*")], "content.private", "data-mining", NOW,
                 (False, "prohibited", None), id="3-prohibited-beats-wildcard-grant"),
    pytest.param(US, [d(1, "granted", "content")], "content", "ai-training", NOW,
                 (False, "prohibited", None), id="3-parent-of-prohibited-is-prohibited"),
    pytest.param(subject(minor=True), [], "content.private", "ai-training", NOW,
                 (False, "prohibited", None), id="3-prohibited-beats-minor"),
    # 4. minor
    pytest.param(subject(minor=True), GRANT_PUBLIC, "content.public", "ai-training", NOW,
                 (False, "minor", None), id="4-minor-beats-grant"),
    pytest.param(subject(minor=True), [], "content.public", "ai-training", NOW,
                 (False, "minor", None), id="4-minor-beats-default-allow"),
    pytest.param(subject("DE", minor=True), [], "biometric", "ai-training", NOW,
                 (False, "minor", None), id="4-minor-beats-explicit-required"),
    # 5. the decision itself
    pytest.param(DE, GRANT_PUBLIC, "content.public", "ai-training", NOW,
                 (True, "consent", 1), id="5-grant-beats-gdpr-default"),
    pytest.param(US, [d(1, "denied")], "content.public", "ai-training", NOW,
                 (False, "refused", 1), id="5-denial-beats-default-allow"),
    pytest.param(US, [d(1, "granted"), d(2, "withdrawn")], "content.public", "ai-training", NOW,
                 (False, "withdrawn", 2), id="5-withdrawn"),
    pytest.param(DE, [d(1, "withdrawn"), d(2, "granted")], "content.public", "ai-training", NOW,
                 (True, "consent", 2), id="5-grant-after-withdrawal"),
    # 5. category hierarchy
    pytest.param(DE, [d(1, "granted", "content")], "content.public", "ai-training", NOW,
                 (True, "consent", 1), id="5-category-parent-applies"),
    pytest.param(DE, [d(1, "granted", "profile")], "profile.employment", "ai-training", NOW,
                 (True, "consent", 1), id="5-category-ancestor-applies"),
    pytest.param(DE, [d(1, "granted", "*")], "location", "ai-training", NOW,
                 (True, "consent", 1), id="5-category-wildcard-applies"),
    pytest.param(DE, [d(1, "granted", "profile.employment")], "profile", "ai-training", NOW,
                 (False, "default-deny", None), id="5-category-descendant-does-not-apply"),
    pytest.param(US, [d(1, "denied", "profile.employment")], "profile", "ai-training", NOW,
                 (True, "default-allow", None), id="5-descendant-denial-does-not-apply"),
    pytest.param(DE, [d(1, "granted", "profile.employment")], "profile.education", "ai-training",
                 NOW, (False, "default-deny", None), id="5-sibling-does-not-apply"),
    pytest.param(DE, [d(1, "granted", "content.public")], "content.public", "data-mining", NOW,
                 (False, "default-deny", None), id="5-other-purpose-does-not-apply"),
    # 5. purpose hierarchy
    pytest.param(DE, [d(1, "granted", purpose="ai-training")], "content.public",
                 "ai-training.generative", NOW,
                 (True, "consent", 1), id="5-purpose-ancestor-applies"),
    pytest.param(DE, [d(1, "granted", purpose="ai-training.generative")], "content.public",
                 "ai-training", NOW,
                 (False, "default-deny", None), id="5-purpose-descendant-does-not-apply"),
    pytest.param(US, [d(1, "denied", purpose="ai-training")], "content.public",
                 "ai-training.generative", NOW,
                 (False, "refused", 1), id="5-parent-purpose-denial-applies"),
    pytest.param(DE, [d(1, "granted", purpose="*")], "content.public", "third-party-sharing",
                 NOW, (True, "consent", 1), id="5-purpose-wildcard-applies"),
    pytest.param(DE, [d(1, "granted", "*", "*")], "activity", "ai-inference", NOW,
                 (True, "consent", 1), id="5-both-wildcards-apply"),
    # 5. latest by (effective, seq)
    pytest.param(US, [d(1, "granted", effective=ts(1)), d(2, "denied", effective=ts(2))],
                 "content.public", "ai-training", NOW,
                 (False, "refused", 2), id="5-later-effective-wins"),
    pytest.param(US, [d(1, "denied", effective=ts(2)), d(2, "granted", effective=ts(1))],
                 "content.public", "ai-training", NOW,
                 (False, "refused", 1), id="5-later-seq-older-effective-loses"),
    pytest.param(US, [d(5, "granted", effective=ts(3)), d(3, "denied", effective=ts(3))],
                 "content.public", "ai-training", NOW,
                 (True, "consent", 5), id="5-same-effective-higher-seq-wins"),
    pytest.param(US, [d(3, "granted", effective=ts(3)), d(5, "denied", effective=ts(3))],
                 "content.public", "ai-training", NOW,
                 (False, "refused", 5), id="5-same-effective-higher-seq-wins-reverse"),
    pytest.param(US, [d(1, "denied", effective=ts(3, 1)), d(2, "granted", effective=ts(3))],
                 "content.public", "ai-training", NOW,
                 (False, "refused", 1), id="5-microseconds-count"),
    pytest.param(DE, [d(1, "granted", "*"), d(2, "denied", "content.public")],
                 "content.public", "ai-training", NOW,
                 (False, "refused", 2), id="5-latest-not-most-specific"),
    pytest.param(DE, [d(2, "granted", "content", effective=ts(5)),
                      d(1, "denied", "content.public", effective=ts(4))],
                 "content.public", "ai-training", NOW,
                 (True, "consent", 2), id="5-later-broad-grant-beats-narrow-denial"),
    # 5. time
    pytest.param(US, [d(1, "granted", effective=ts(1)), d(2, "denied", effective=ts(10))],
                 "content.public", "ai-training", ts(5),
                 (True, "consent", 1), id="5-future-effective-ignored"),
    pytest.param(DE, [d(1, "granted", effective=ts(10))], "content.public", "ai-training", ts(5),
                 (False, "default-deny", None), id="5-only-future-decision"),
    pytest.param(US, [d(1, "denied", effective=ts(5))], "content.public", "ai-training", ts(5),
                 (False, "refused", 1), id="5-effective-equal-to-at-applies"),
    pytest.param(DE, [d(1, "granted", effective=ts(1), expires=ts(5))], "content.public",
                 "ai-training", ts(5), (False, "default-deny", None), id="5-expires-at-at"),
    pytest.param(DE, [d(1, "granted", effective=ts(1), expires=ts(5))], "content.public",
                 "ai-training", ts(4, 999999), (True, "consent", 1), id="5-just-before-expiry"),
    pytest.param(US, [d(1, "denied", effective=ts(1)),
                      d(2, "granted", effective=ts(2), expires=ts(4))],
                 "content.public", "ai-training", ts(5),
                 (False, "refused", 1), id="5-expired-grant-reveals-earlier-denial"),
    # 5. special categories
    pytest.param(US, [d(1, "granted", "biometric", explicit=True)], "biometric.face",
                 "ai-training", NOW, (True, "consent", 1), id="5-explicit-grant-via-parent"),
    pytest.param(DE, [d(1, "granted", "*", explicit=True)], "biometric.face", "ai-training", NOW,
                 (True, "consent", 1), id="5-explicit-grant-via-wildcard"),
    pytest.param(US, [d(1, "granted", "biometric.face", explicit=True)], "biometric.face",
                 "ai-training", NOW, (True, "consent", 1), id="5-explicit-grant-direct"),
    pytest.param(US, [d(1, "granted", "biometric")], "biometric.face", "ai-training", NOW,
                 (False, "explicit-consent-required", None), id="6-non-explicit-grant-ignored"),
    pytest.param(US, [d(1, "granted", "*", "*")], "biometric.voice", "ai-training", NOW,
                 (False, "explicit-consent-required", None), id="6-wildcard-grant-not-explicit"),
    pytest.param(US, [d(1, "granted", "biometric", explicit=True, effective=ts(1)),
                      d(2, "granted", "biometric", effective=ts(2))],
                 "biometric.face", "ai-training", NOW,
                 (True, "consent", 1), id="5-later-non-explicit-grant-keeps-explicit"),
    pytest.param(US, [d(1, "denied", "biometric", effective=ts(1)),
                      d(2, "granted", "biometric", effective=ts(2))],
                 "biometric.face", "ai-training", NOW,
                 (False, "refused", 1), id="5-later-non-explicit-grant-keeps-denial"),
    pytest.param(US, [d(1, "denied", "biometric.face")], "biometric.face", "ai-training", NOW,
                 (False, "refused", 1), id="5-biometric-denial-refused"),
    pytest.param(US, [d(1, "granted", "biometric", explicit=True, effective=ts(1)),
                      d(2, "withdrawn", "biometric", effective=ts(2))],
                 "biometric", "ai-training", NOW,
                 (False, "withdrawn", 2), id="5-biometric-withdrawal"),
    pytest.param(US, [d(1, "granted", "content.public", explicit=True)], "biometric",
                 "ai-training", NOW,
                 (False, "explicit-consent-required", None), id="6-other-category-grant"),
    # 6. special category without an applicable decision
    pytest.param(US, [], "biometric", "ai-training", NOW,
                 (False, "explicit-consent-required", None), id="6-special-beats-default"),
    pytest.param(DE, [], "biometric.face", "data-mining", NOW,
                 (False, "explicit-consent-required", None), id="6-special-in-gdpr"),
    # 7. regime defaults
    pytest.param(DE, [], "content.public", "ai-training", NOW,
                 (False, "default-deny", None), id="7-gdpr-DE"),
    pytest.param(subject("fr"), [], "activity", "ai-training", NOW,
                 (False, "default-deny", None), id="7-gdpr-lowercase"),
    pytest.param(subject("GB"), [], "content.public", "ai-training", NOW,
                 (False, "default-deny", None), id="7-gdpr-GB"),
    pytest.param(subject("CH"), [], "profile", "ai-training", NOW,
                 (False, "default-deny", None), id="7-gdpr-CH"),
    pytest.param(subject("NO"), [], "activity", "ai-training", NOW,
                 (False, "default-deny", None), id="7-gdpr-NO"),
    pytest.param(US, [], "content.public", "ai-training", NOW,
                 (True, "default-allow", None), id="7-US-content-public"),
    pytest.param(US, [], "profile.employment", "ai-training", NOW,
                 (True, "default-allow", None), id="7-US-employment"),
    pytest.param(US, [], "activity", "ai-training", NOW,
                 (True, "default-allow", None), id="7-US-activity"),
    pytest.param(US, [], "activity", "ai-training.generative", NOW,
                 (True, "default-allow", None), id="7-US-generative-inherits"),
    pytest.param(US, [], "location", "ai-training", NOW,
                 (False, "default-deny", None), id="7-US-location"),
    pytest.param(US, [], "content.public", "data-mining", NOW,
                 (False, "default-deny", None), id="7-US-data-mining"),
    pytest.param(subject(None), [], "content.public", "ai-training", NOW,
                 (False, "default-deny", None), id="7-unknown-jurisdiction"),
]  # fmt: skip


@pytest.mark.parametrize(("state", "decisions", "category", "purpose", "at", "expected"), CASES)
def test_eligibility_rules_in_order(
    state: SubjectState | None,
    decisions: list[Decision],
    category: str,
    purpose: str,
    at: str,
    expected: tuple[bool, str, int | None],
) -> None:
    result = evaluate_eligibility(default_policy(), state, decisions, category, purpose, at)
    assert (result.eligible, result.reason, result.decided_by) == expected


def test_every_case_reason_is_a_known_reason() -> None:
    reasons = {case.values[-1][1] for case in CASES}  # type: ignore[index]
    assert reasons == set(REASONS)


def test_decisions_may_be_a_one_shot_iterator() -> None:
    result = evaluate_eligibility(
        default_policy(), DE, iter(GRANT_PUBLIC), "content.public", "ai-training", NOW
    )
    assert result == Eligibility(True, "consent", 1)


def test_policy_may_make_minors_eligible() -> None:
    document = copy.deepcopy(default_policy().to_document())
    document["minors_eligible"] = True
    policy = Policy.from_document(document)
    minor = subject(minor=True)
    assert evaluate_eligibility(
        policy, minor, GRANT_PUBLIC, "content.public", "ai-training", NOW
    ) == Eligibility(True, "consent", 1)
    # Prohibitions still hold for everyone.
    assert evaluate_eligibility(
        policy, minor, [], "content.private", "ai-training", NOW
    ) == Eligibility(False, "prohibited", None)


def test_a_new_policy_version_changes_the_us_answer() -> None:
    document = copy.deepcopy(default_policy().to_document())
    document["version"] = 2
    document["defaults"]["default"]["ai-training"]["profile.employment"] = "deny"
    policy = Policy.from_document(document)
    assert evaluate_eligibility(
        policy, US, [], "profile.employment", "ai-training", NOW
    ) == Eligibility(False, "default-deny", None)
    assert evaluate_eligibility(
        policy, US, [], "profile.education", "ai-training", NOW
    ) == Eligibility(True, "default-allow", None)


# ---------------------------------------------------------------- properties

CATEGORIES = ("*", "content", "content.public", "biometric", "biometric.face", "profile")
PURPOSES = ("*", "ai-training", "ai-training.generative", "data-mining")
QUERY_CATEGORIES = ("content.public", "biometric.face", "biometric", "profile.employment")
QUERY_PURPOSES = ("ai-training", "ai-training.generative", "data-mining")
TIMES = tuple(ts(day) for day in range(1, 8))


@st.composite
def decision_lists(draw: st.DrawFn) -> list[Decision]:
    # Few names and few distinct times, so that ties and overlaps are common.
    seqs = draw(st.lists(st.integers(0, 50), unique=True, max_size=12))
    decisions = []
    for seq in seqs:
        effective = draw(st.sampled_from(TIMES))
        later = [t for t in TIMES if t > effective]
        expires = draw(st.one_of(st.none(), st.sampled_from(later))) if later else None
        decisions.append(
            Decision(
                seq=seq,
                category=draw(st.sampled_from(CATEGORIES)),
                purpose=draw(st.sampled_from(PURPOSES)),
                decision=draw(st.sampled_from(("granted", "denied", "withdrawn"))),
                explicit=draw(st.booleans()),
                effective=effective,
                expires=expires,
            )
        )
    return decisions


def _reference(
    decisions: list[Decision], category: str, purpose: str, at: str, special: bool
) -> Decision | None:
    # Rule 5 written the obvious way: filter, sort, take the last.
    applicable = [
        x
        for x in decisions
        if (x.category == "*" or x.category in ancestors(category))
        and (x.purpose == "*" or x.purpose in ancestors(purpose))
        and x.effective <= at
        and (x.expires is None or at < x.expires)
        and not (special and x.decision == "granted" and not x.explicit)
    ]
    applicable.sort(key=lambda x: (x.effective, x.seq))
    return applicable[-1] if applicable else None


@given(
    decisions=decision_lists(),
    data=st.data(),
    category=st.sampled_from(QUERY_CATEGORIES),
    purpose=st.sampled_from(QUERY_PURPOSES),
    at=st.sampled_from(TIMES),
    jurisdiction=st.sampled_from(("US", "DE", None)),
)
def test_eligibility_does_not_depend_on_decision_order(
    decisions: list[Decision],
    data: st.DataObject,
    category: str,
    purpose: str,
    at: str,
    jurisdiction: str | None,
) -> None:
    policy = default_policy()
    state = subject(jurisdiction)
    shuffled = data.draw(st.permutations(decisions))
    result = evaluate_eligibility(policy, state, decisions, category, purpose, at)
    assert evaluate_eligibility(policy, state, shuffled, category, purpose, at) == result
    assert evaluate_eligibility(policy, state, reversed(decisions), category, purpose, at) == result

    deciding = _reference(decisions, category, purpose, at, policy.is_special(category))
    if deciding is not None:
        assert result.decided_by == deciding.seq
        assert result.eligible is (deciding.decision == "granted")
    else:
        assert result.decided_by is None
        assert result.reason in {"explicit-consent-required", "default-allow", "default-deny"}


@given(
    subjects=st.lists(
        st.tuples(st.sampled_from(("US", "DE", None)), st.booleans(), decision_lists()),
        min_size=1,
        max_size=4,
    ),
    items=st.lists(
        st.tuples(
            st.integers(0, 4),
            st.sampled_from(QUERY_CATEGORIES),
            st.sampled_from(QUERY_PURPOSES),
        ),
        max_size=20,
    ),
    at=st.sampled_from(TIMES),
)
def test_batch_evaluator_answers_as_evaluate_eligibility(
    subjects: list[tuple[str | None, bool, list[Decision]]],
    items: list[tuple[int, str, str]],
    at: str,
) -> None:
    policy = default_policy()
    # Subject i exists for i < len(subjects); the others were never registered.
    states = {
        f"s{i}": subject(jurisdiction, minor=minor)
        for i, (jurisdiction, minor, _) in enumerate(subjects)
    }
    decisions = {f"s{i}": listed for i, (_, _, listed) in enumerate(subjects)}
    error = ValueError("a bad item")
    batch: list[tuple[str, str, str] | ValueError] = [
        (f"s{index}", category, purpose) for index, category, purpose in items
    ]
    batch.insert(len(batch) // 2, error)
    results = BatchEvaluator(policy, at).evaluate_all(batch, states, decisions)
    assert len(results) == len(batch)
    for item, result in zip(batch, results, strict=True):
        if isinstance(item, ValueError):
            assert result is error
            continue
        subject_id, category, purpose = item
        expected = evaluate_eligibility(
            policy, states.get(subject_id), decisions.get(subject_id, []), category, purpose, at
        )
        assert result == expected
