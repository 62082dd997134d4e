"""The change feed's effects keep a cache of eligibility answers right (SPEC §8, §3.4).

Two properties. The pure one: for any policy, subject state and decisions, with
effective and expiry instants anywhere around one fixed instant, `EffectEvaluator`
names exactly the pairs whose answer (by `evaluate_eligibility`, the §3.4 function)
an entry turns, with the answer after it. The one through the real service, on both
engines: hypothesis writes random histories (registrations and updates with random
jurisdictions and minor flags; grants, denials and withdrawals on categories, their
ancestors and `*`, explicit or not, on special categories too, effective in the past,
expiring never, far in the future or already; erasures; policies published mid-way)
and records the answers of `check_many` for every subject and pair at every tree size
it passes, at one fixed instant. Then, from every such size N, the feed's pages (of a
random length) are read and their effects applied in order to a cache built at N: at
every later size N + k the cache equals the answers there. A `policy.published` event
carries no answers: the cache may be wrong only on the pairs it lists, which are then
re-checked.

Decisions take effect at or before their entry and expire before it or long after the
fixed instant, so that nothing changes by time alone between an entry and that instant:
the feed reports what entries change, not what the clock does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.consent.decisions import DecisionRequest
from ledger.consent.effects import EffectEvaluator, PairEffect, policy_effect
from ledger.consent.eligibility import Decision, SubjectState, evaluate_eligibility
from ledger.consent.policy import Policy, default_policy
from ledger.service import ConsentLedger
from ledger.timestamps import format_timestamp, parse_timestamp, utc_now
from tests.test_obligations_property import LedgerFactory, postgres_ledgers, sqlite_ledgers

ACTOR = "feed-prop"
SUBJECTS = ("s0", "s1", "s2", "s3")
JURISDICTIONS = ("US", "DE", "GB", "BR", None)
DECIDED_CATEGORIES = (
    "*",
    "content",
    "content.public",
    "content.private",
    "profile",
    "profile.employment",
    "biometric",
    "biometric.face",
    "activity",
    "location",
)
DECIDED_PURPOSES = ("*", "ai-training", "ai-training.generative", "data-mining")
DECISIONS = ("granted", "granted", "denied", "withdrawn")
EXAMPLES = {"sqlite": 25, "postgresql": 10}


# --- policies: the default one, changed in one way --------------------------------------------


def _prohibit_profile(doc: dict[str, Any]) -> None:
    doc["prohibited"].append({"category": "profile", "purpose": "ai-training"})


def _deny_public_by_default(doc: dict[str, Any]) -> None:
    doc["defaults"]["default"]["ai-training"]["content.public"] = "deny"


def _allow_public_in_gdpr(doc: dict[str, Any]) -> None:
    doc["defaults"]["gdpr"]["ai-training"] = {"content.public": "allow"}


def _allow_activity_when_unknown(doc: dict[str, Any]) -> None:
    doc["defaults"]["unknown"]["ai-training"] = {"activity": "allow"}


def _minors_eligible(doc: dict[str, Any]) -> None:
    doc["minors_eligible"] = True


def _location_special(doc: dict[str, Any]) -> None:
    doc["special"].append("location")
    doc["defaults"]["default"]["*"] = {"location": "allow"}


def _gb_leaves_gdpr(doc: dict[str, Any]) -> None:
    doc["regimes"]["gdpr"].remove("GB")


def _brazil_regime(doc: dict[str, Any]) -> None:
    doc["regimes"]["lgpd"] = ["BR"]
    doc["defaults"]["lgpd"] = {"data-mining": {"*": "allow"}}


def _nothing_special(doc: dict[str, Any]) -> None:
    doc["special"] = []


POLICY_CHANGES: dict[str, Callable[[dict[str, Any]], None]] = {
    "none": lambda doc: None,
    "prohibit-profile": _prohibit_profile,
    "deny-public-by-default": _deny_public_by_default,
    "allow-public-in-gdpr": _allow_public_in_gdpr,
    "allow-activity-when-unknown": _allow_activity_when_unknown,
    "minors-eligible": _minors_eligible,
    "location-special": _location_special,
    "gb-leaves-gdpr": _gb_leaves_gdpr,
    "brazil-regime": _brazil_regime,
    "nothing-special": _nothing_special,
}


def changed_policy(change: str, version: int) -> Policy:
    document = default_policy().to_document()
    document["version"] = version
    POLICY_CHANGES[change](document)
    return Policy.from_document(document)


# --- the pure property: EffectEvaluator against evaluate_eligibility ---------------------------

AT = "2030-01-01T00:00:00.000000Z"


def shifted(moment: str, **delta: float) -> str:
    return format_timestamp(parse_timestamp(moment) + timedelta(**delta))


# Instants around AT, with ties and the boundaries themselves (effective == AT applies,
# expires == AT does not).
INSTANTS = tuple(
    sorted(
        {
            shifted(AT, days=-2),
            shifted(AT, hours=-1),
            shifted(AT, microseconds=-1),
            AT,
            shifted(AT, microseconds=1),
            shifted(AT, hours=1),
            shifted(AT, days=2),
        }
    )
)

states = st.one_of(
    st.none(),
    st.builds(
        SubjectState,
        registered=st.just(True),
        erased=st.sampled_from((False, False, False, True)),
        minor=st.sampled_from((False, False, True)),
        jurisdiction=st.sampled_from(JURISDICTIONS),
    ),
)


@st.composite
def pure_decisions(draw: st.DrawFn) -> list[Decision]:
    made = []
    for seq in range(draw(st.integers(0, 10))):
        effective = draw(st.sampled_from(INSTANTS))
        later_instants = [instant for instant in INSTANTS if instant > effective]
        expires = draw(st.one_of(st.none(), st.sampled_from(later_instants or [None])))
        made.append(
            Decision(
                seq=100 + seq,
                category=draw(st.sampled_from(DECIDED_CATEGORIES)),
                purpose=draw(st.sampled_from(DECIDED_PURPOSES)),
                decision=draw(st.sampled_from(DECISIONS)),
                explicit=draw(st.booleans()),
                effective=effective,
                expires=expires,
            )
        )
    return made


def brute_answers(
    policy: Policy, state: SubjectState | None, decisions: Sequence[Decision], at: str
) -> dict[tuple[str, str], tuple[bool, str]]:
    answers = {}
    for category in policy.categories:
        for purpose in policy.purposes:
            answer = evaluate_eligibility(policy, state, decisions, category, purpose, at)
            answers[category, purpose] = (answer.eligible, answer.reason)
    return answers


def brute_effect(
    before: dict[tuple[str, str], tuple[bool, str]],
    after: dict[tuple[str, str], tuple[bool, str]],
) -> dict[tuple[str, str], tuple[bool, str]]:
    return {pair: answer for pair, answer in after.items() if before[pair][0] != answer[0]}


def as_dict(effect: Sequence[PairEffect]) -> dict[tuple[str, str], tuple[bool, str]]:
    found = {(item.category, item.purpose): (item.eligible, item.reason) for item in effect}
    assert len(found) == len(effect), f"a pair is named twice: {effect}"
    return found


@settings(max_examples=300, deadline=None)
@given(
    change=st.sampled_from(tuple(POLICY_CHANGES)),
    state=states,
    decisions=pure_decisions(),
    at=st.sampled_from(INSTANTS),
)
def test_a_decisions_effect_is_the_pairs_whose_answer_it_turns(
    change: str, state: SubjectState | None, decisions: list[Decision], at: str
) -> None:
    policy = changed_policy(change, 2)
    evaluator = EffectEvaluator(policy)
    for position, decision in enumerate(decisions):
        before = decisions[:position]
        expected = brute_effect(
            brute_answers(policy, state, before, at),
            brute_answers(policy, state, [*before, decision], at),
        )
        actual = evaluator.decision_effect(state, before, decision, at)
        assert as_dict(actual) == expected, (position, decision)


@settings(max_examples=300, deadline=None)
@given(
    change=st.sampled_from(tuple(POLICY_CHANGES)),
    path=st.lists(states, min_size=2, max_size=5),
    decisions=pure_decisions(),
    at=st.sampled_from(INSTANTS),
)
def test_a_state_changes_effect_is_the_pairs_whose_answer_it_turns(
    change: str, path: list[SubjectState | None], decisions: list[Decision], at: str
) -> None:
    policy = changed_policy(change, 2)
    evaluator = EffectEvaluator(policy)
    for old, new in zip(path, path[1:], strict=False):
        if new is None:
            continue  # a subject is never unregistered
        expected = brute_effect(
            brute_answers(policy, old, decisions, at), brute_answers(policy, new, decisions, at)
        )
        assert as_dict(evaluator.state_effect(old, new, decisions, at)) == expected, (old, new)
        # The evaluator's own answers are §3.4's, for every pair.
        answers = evaluator.answers(new, decisions, at)
        assert [(a.eligible, a.reason) for a in answers] == list(
            brute_answers(policy, new, decisions, at).values()
        )


@settings(max_examples=200, deadline=None)
@given(
    old=st.sampled_from(tuple(POLICY_CHANGES)),
    new=st.sampled_from(tuple(POLICY_CHANGES)),
    state=states,
    decisions=pure_decisions(),
    at=st.sampled_from(INSTANTS),
)
def test_a_policy_changes_answers_only_on_the_pairs_it_lists(
    old: str, new: str, state: SubjectState | None, decisions: list[Decision], at: str
) -> None:
    previous, policy = changed_policy(old, 2), changed_policy(new, 3)
    listed = set(policy_effect(previous, policy))
    before = brute_answers(previous, state, decisions, at)
    after = brute_answers(policy, state, decisions, at)
    turned = {pair for pair in after if before[pair][0] != after[pair][0]}
    assert turned <= listed, f"answers changed on unlisted pairs: {sorted(turned - listed)}"
    if old == new:
        assert not listed


def test_the_first_policy_lists_every_pair() -> None:
    policy = default_policy()
    assert set(policy_effect(None, policy)) == {
        (category, purpose) for category in policy.categories for purpose in policy.purposes
    }


# --- the property through the service: a cache kept by the feed -----------------------------


@pytest.fixture(params=tuple(EXAMPLES))
def ledgers(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> tuple[str, LedgerFactory]:
    """A factory of fresh, initialised ledgers on one engine (one per example)."""
    if request.param == "sqlite":
        return request.param, sqlite_ledgers(sqlite_template, tmp_path)
    return request.param, postgres_ledgers(request.getfixturevalue("postgres_template"), tmp_path)


@dataclass(frozen=True)
class Register:
    """Register the subject, or update its jurisdiction and minor flag."""

    subject: str
    jurisdiction: str | None
    minor: bool


@dataclass(frozen=True)
class Decide:
    """`effective`: None (the entry's time) or days before the history began (ties
    between decisions are common); `expires`: None, `far` (a year on) or `past`
    (before the history began, so only with a backdated `effective`)."""

    subject: str
    category: str
    purpose: str
    decision: str
    explicit: bool
    effective: int | None
    expires: str | None


@dataclass(frozen=True)
class DecideMany:
    """Several decisions for one subject in one append (one transaction, one time)."""

    subject: str
    decisions: tuple[Decide, ...]


@dataclass(frozen=True)
class Erase:
    subject: str


@dataclass(frozen=True)
class Publish:
    change: str


subjects = st.sampled_from(SUBJECTS)
registrations = st.builds(
    Register,
    subjects,
    st.sampled_from(JURISDICTIONS),
    st.sampled_from((False, False, False, True)),
)
decides = st.builds(
    Decide,
    subjects,
    st.sampled_from(DECIDED_CATEGORIES),
    st.sampled_from(DECIDED_PURPOSES),
    st.sampled_from(DECISIONS),
    st.booleans(),
    st.one_of(st.none(), st.integers(1, 3)),
    st.sampled_from((None, None, "far", "past")),
)
decide_many = st.builds(DecideMany, subjects, st.lists(decides, min_size=2, max_size=4).map(tuple))
operations = st.one_of(
    decide_many,
    decides,
    decides,
    decides,
    registrations,
    st.builds(Erase, subjects),
    st.builds(Publish, st.sampled_from(tuple(POLICY_CHANGES))),
)
histories = st.tuples(
    st.lists(registrations, min_size=1, max_size=3),
    st.lists(operations, min_size=3, max_size=16),
).map(lambda parts: [*parts[0], *parts[1]])

Answers = dict[tuple[str, str, str], tuple[bool, str]]  # (subject, category, purpose) →


@dataclass
class History:
    """A ledger, the operations written to it, and the answers at every size it passed."""

    ledger: ConsentLedger
    start: str  # when the history began: backdated decisions count from here
    instant: str  # the fixed instant every answer is taken at
    refs: dict[str, str] = field(default_factory=dict)  # subject id → ref
    erased: set[str] = field(default_factory=set)
    policy_version: int = 1
    answers: dict[int, Answers] = field(default_factory=dict)  # tree size →
    steps: list[str] = field(default_factory=list)

    def apply(self, operation: object) -> None:
        self.steps.append(f"{self.ledger.tree_size()}: {operation!r}")
        getattr(self, f"_{type(operation).__name__.lower()}")(operation)
        self.record_answers()

    def _register(self, op: Register) -> None:
        if op.subject in self.erased:
            return
        sealed = self.ledger.register_subject(
            op.subject, jurisdiction=op.jurisdiction, minor=op.minor, actor=ACTOR
        )
        if sealed is not None and op.subject not in self.refs:
            self.refs[op.subject] = sealed.entries[0].body["data"]["subject"]

    def _decide(self, op: Decide) -> None:
        self._decidemany(DecideMany(op.subject, (op,)))

    def _decidemany(self, many: DecideMany) -> None:
        if many.subject not in self.refs or many.subject in self.erased:
            return
        self.ledger.record_consents(
            many.subject, [self._request(op) for op in many.decisions], actor=ACTOR
        )

    def _request(self, op: Decide) -> DecisionRequest:
        start = parse_timestamp(self.start)
        effective = None
        if op.effective is not None:
            effective = format_timestamp(start - timedelta(days=op.effective))
        expires = None
        if op.expires == "far":
            expires = format_timestamp(start + timedelta(days=365))
        elif op.expires == "past" and effective is not None:
            expires = format_timestamp(start - timedelta(hours=12))
        return DecisionRequest(
            op.category, op.decision, op.purpose, op.explicit, effective=effective, expires=expires
        )

    def _erase(self, op: Erase) -> None:
        if op.subject not in self.refs or op.subject in self.erased:
            return
        self.ledger.erase_subject(op.subject, actor=ACTOR)
        self.erased.add(op.subject)

    def _publish(self, op: Publish) -> None:
        self.policy_version += 1
        policy = changed_policy(op.change, self.policy_version)
        self.ledger.publish_policy(policy, actor=ACTOR)

    def record_answers(self) -> None:
        """Every subject's answer for every pair at the fixed instant, at every tree size
        since the last one recorded (inside a transaction of several entries too)."""
        size = self.ledger.tree_size()
        for as_of in range(max(self.answers, default=size - 1) + 1, size + 1):
            self._record_answers_at(as_of)

    def _record_answers_at(self, size: int) -> None:
        policy = self.ledger.current_policy()
        items = [
            (subject, category, purpose)
            for subject in SUBJECTS
            for category in policy.categories
            for purpose in policy.purposes
        ]
        batch = self.ledger.check_many(items, as_of=size, at=self.instant)
        assert batch.checked_at == size
        answers: Answers = {}
        for item, result in zip(items, batch.results, strict=True):
            assert not isinstance(result, Exception), (item, result)
            answers[item] = (result.eligible, result.reason)
        self.answers[size] = answers

    def explain(self) -> str:
        return "\n".join(["history:", *(f"  {step}" for step in self.steps)])


def feed_from(ledger: ConsentLedger, after: int, limit: int, end: int) -> Iterator[dict[str, Any]]:
    """Every event from cursor `after` to `end`, page by page, checking the pages chain."""
    cursor = after
    while cursor < end:
        page = ledger.changes(cursor, limit)
        assert page.after == cursor
        assert [event["seq"] for event in page.events] == list(
            range(cursor, min(cursor + limit, end, page.tree_size))
        ), f"page after {cursor}, limit {limit}"
        assert page.next == cursor + len(page.events) > cursor
        yield from page.events
        cursor = page.next


def check_cache_kept_by_feed(history: History, start: int, limit: int) -> None:
    """Build the cache at `start`, apply the feed from there, compare at every size."""
    sizes = sorted(history.answers)
    end = sizes[-1]
    names = {ref: subject for subject, ref in history.refs.items()}
    cache = dict(history.answers[start])
    for event in feed_from(history.ledger, start, limit, end):
        seq = event["seq"]
        truth = history.answers.get(seq + 1)
        where = f"cache built at {start}, after event {seq} ({event['kind']})"
        if event["kind"] == "policy.published":
            assert truth is not None, "a policy is published in a step of its own"
            listed = {(item["category"], item["purpose"]) for item in event["effect"]}
            assert all(set(item) == {"category", "purpose"} for item in event["effect"])
            wrong = {
                (subject, category, purpose)
                for (subject, category, purpose), answer in truth.items()
                if cache.get((subject, category, purpose), (None,))[0] != answer[0]
            }
            unlisted = sorted(key for key in wrong if key[1:] not in listed)
            assert not unlisted, f"{where}: wrong on unlisted pairs {unlisted}\n{history.explain()}"
            cache = {key: truth[key] if key[1:] in listed else cache[key] for key in truth}
        else:
            subject = names.get(event["subject"]) if event["subject"] else None
            for item in event["effect"]:
                assert subject is not None, f"{where}: an effect without a subject"
                key = (subject, item["category"], item["purpose"])
                assert isinstance(item["eligible"], bool), item
                cache[key] = (item["eligible"], item["reason"])
                if truth is not None:
                    assert truth[key] == (item["eligible"], item["reason"]), (
                        f"{where}: effect {item} but the check answers {truth[key]}\n"
                        f"{history.explain()}"
                    )
        if truth is not None:
            wrong_now = sorted(
                (key, cache.get(key), answer)
                for key, answer in truth.items()
                if cache.get(key, (None,))[0] != answer[0]
            )
            assert not wrong_now, (
                f"{where}: the cache differs from the answers at {seq + 1} on "
                f"(key, cache, answer) {wrong_now[:12]}\n{history.explain()}"
            )
            # The cache's reasons may lag (a reason that changes without the answer is
            # no effect); only its booleans are compared from here on.
            cache = {key: (cache[key][0], truth[key][1]) for key in truth}


def check_events_name_their_subjects(history: History) -> None:
    """Subject events carry the id while it is mapped, null once erased, the ref always."""
    end = history.ledger.tree_size()
    names = {ref: subject for subject, ref in history.refs.items()}
    for event in feed_from(history.ledger, 0, 1000, end):
        ref = event["subject"]
        if ref is None:
            assert event["subject_id"] is None
            continue
        subject = names[ref]
        expected = None if subject in history.erased else subject
        assert event["subject_id"] == expected, event


def run_history(led: ConsentLedger, operations: Sequence[object], limits: Sequence[int]) -> None:
    now = utc_now()
    history = History(
        led, start=format_timestamp(now), instant=format_timestamp(now + timedelta(hours=1))
    )
    history.record_answers()
    for operation in operations:
        history.apply(operation)
    sizes = sorted(history.answers)
    for position, start in enumerate(sizes[:-1]):
        check_cache_kept_by_feed(history, start, limits[position % len(limits)])
    check_events_name_their_subjects(history)


def test_effects_applied_to_a_cache_give_the_answers_after_them(
    ledgers: tuple[str, LedgerFactory],
) -> None:
    engine, fresh = ledgers

    @settings(
        max_examples=EXAMPLES[engine],
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(operations=histories, limits=st.lists(st.integers(1, 6), min_size=1, max_size=4))
    def holds(operations: list[object], limits: list[int]) -> None:
        with fresh() as led:
            run_history(led, operations, limits)

    holds()


# --- examples that must keep being covered -----------------------------------------------------


@pytest.mark.parametrize(
    "operations",
    [
        pytest.param(
            [
                Register("s0", "US", False),
                Decide("s0", "content", "*", "withdrawn", False, None, None),
                Decide("s0", "content.public", "ai-training", "granted", False, None, None),
                Decide("s0", "*", "*", "denied", False, 2, None),  # backdated: decides nothing
                Erase("s0"),
            ],
            id="withdraw-regrant-backdated-erase",
        ),
        pytest.param(
            [
                Register("s1", "DE", False),
                Decide("s1", "biometric", "*", "granted", False, None, None),
                Decide("s1", "biometric.face", "ai-training", "granted", True, 1, "far"),
                Decide("s1", "biometric", "ai-training", "denied", False, 1, None),  # tie
                Decide("s1", "*", "*", "granted", False, 3, "past"),
                Register("s1", "US", True),
                Publish("minors-eligible"),
                Publish("nothing-special"),
            ],
            id="special-ties-expired-minor-policies",
        ),
        pytest.param(
            [
                Register("s2", "US", False),
                Register("s3", None, False),
                DecideMany(
                    "s2",
                    (
                        Decide("s2", "content.public", "*", "withdrawn", False, None, None),
                        Decide("s2", "content", "ai-training", "granted", False, None, None),
                        Decide("s2", "*", "data-mining", "granted", False, 1, "far"),
                    ),
                ),
                Publish("allow-activity-when-unknown"),
                DecideMany(
                    "s3",
                    (
                        Decide("s3", "activity", "*", "denied", False, 2, None),
                        Decide("s3", "*", "*", "granted", False, 2, None),  # tie: seq decides
                    ),
                ),
            ],
            id="several-decisions-in-one-append",
        ),
    ],
)
def test_worked_histories(ledgers: tuple[str, LedgerFactory], operations: list[object]) -> None:
    _, fresh = ledgers
    with fresh() as led:
        run_history(led, operations, [1, 3])
