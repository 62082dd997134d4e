"""Purge obligations are a function of the log and the instant (SPEC §7.2), on both engines.

Hypothesis writes random histories — subjects registered and updated, decisions on
categories, their ancestors and `*` taking effect and expiring, erasures, policies,
builds, purges, retirements, and time passing — and after every step sweeps at a
known instant T and compares the ledger's open obligations with a brute force written
here from SPEC §3.4 and §7.2 alone: a member (recorded, neither purged nor retired)
has an open obligation exactly when it is not eligible at T under the log as it
stands, and its cause time is the last instant at which it stopped being eligible.
`verify` must pass after every step too (it checks reasons, causes and due times
against the ledger's own definition).

Two clocks: `ticking`, where the ledger's clock is the history's (entries are dated as
they are appended, a microsecond apart, and T is read after them), and `ahead`, where
T runs a day ahead of the wall clock that dates entries, so that later entries are
dated before earlier sweeps (a sweep given a later `now`, or a fast clock elsewhere).
Either way every entry is dated at or before T, and a listing (which brings the
obligations up to its own clock first) never moves them past T.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.engine import make_url

from ledger.consent.decisions import DecisionRequest
from ledger.consent.eligibility import Decision, SubjectState, evaluate_eligibility
from ledger.consent.policy import Policy, default_policy
from ledger.errors import InvalidInput, NotFound, VerificationError
from ledger.service import BuildItem, ConsentLedger
from ledger.service import builds as service_builds
from ledger.service import checker as service_checker
from ledger.service import datasets as service_datasets
from ledger.service import reads as service_reads
from ledger.settings import Settings
from ledger.timestamps import format_timestamp, parse_timestamp, utc_now
from ledger.tlog import log as tlog_log
from ledger.tlog.log import LogEntry
from tests.conftest import PG_URL, TEST_ORIGIN, _admin_engine

ACTOR = "prop"
SUBJECTS = ("s0", "s1", "s2")
JURISDICTIONS = ("US", "DE", None)
DECIDED_CATEGORIES = (
    "*",
    "content",
    "content.public",
    "profile",
    "profile.employment",
    "biometric",
    "biometric.face",
    "activity",
)
DECIDED_PURPOSES = ("*", "ai-training", "ai-training.generative")
RECORD_CATEGORIES = (
    "content.public",
    "profile",
    "profile.employment",
    "biometric.face",
    "activity",
)
BUILD_PURPOSES = ("ai-training", "ai-training.generative")
DATASETS = ("posts", "media")
EXAMPLES = {"sqlite": 30, "postgresql": 12}


# --- the operations a history is made of ------------------------------------------------------


@dataclass(frozen=True)
class Register:
    """Register the subject, or change its jurisdiction and minor flag."""

    subject: str
    jurisdiction: str | None
    minor: bool


@dataclass(frozen=True)
class Decide:
    """A decision; `effective` and `expires` are minutes relative to T (None: unset;
    `expires` counts from `effective`, or from T when that is unset)."""

    subject: str
    category: str
    purpose: str
    decision: str
    explicit: bool
    effective: int | None
    expires: int | None


@dataclass(frozen=True)
class Erase:
    subject: str


@dataclass(frozen=True)
class Publish:
    """Publish the default policy changed in one way (`POLICY_CHANGES`)."""

    change: str


@dataclass(frozen=True)
class Build:
    dataset: str
    purpose: str
    records: tuple[tuple[str, tuple[str, ...]], ...]  # (subject, categories) per record


@dataclass(frozen=True)
class Purge:
    build: int  # index among the live builds, modulo their number
    members: tuple[int, ...]  # indexes among its live members, modulo their number


@dataclass(frozen=True)
class Retire:
    build: int


@dataclass(frozen=True)
class Wait:
    minutes: int


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


def _purge_within_a_week(doc: dict[str, Any]) -> None:
    doc["purge_within"] = 7


POLICY_CHANGES: dict[str, Callable[[dict[str, Any]], None]] = {
    "none": lambda doc: None,
    "prohibit-profile": _prohibit_profile,
    "deny-public-by-default": _deny_public_by_default,
    "allow-public-in-gdpr": _allow_public_in_gdpr,
    "allow-activity-when-unknown": _allow_activity_when_unknown,
    "minors-eligible": _minors_eligible,
    "purge-within-a-week": _purge_within_a_week,
}

subjects = st.sampled_from(SUBJECTS)
registrations = st.builds(
    Register,
    subjects,
    st.sampled_from(JURISDICTIONS),
    st.sampled_from((False, False, False, True)),
)
decisions = st.builds(
    Decide,
    subjects,
    # The records' own categories twice as often as their ancestors.
    st.sampled_from((*DECIDED_CATEGORIES, *RECORD_CATEGORIES)),
    st.sampled_from(DECIDED_PURPOSES),
    st.sampled_from(("granted", "granted", "denied", "withdrawn")),
    st.booleans(),
    # Unset (the entry's time), backdated before the entry, in T's past, or after T.
    st.one_of(st.none(), st.sampled_from((-43_200, -30)), st.integers(1, 120)),
    st.one_of(st.none(), st.integers(1, 120)),
)
# What obligations hinge on, more often than among decisions at large: a withdrawal, and
# a window of eligibility (an explicit grant taking effect after T and expiring later).
withdrawals = st.builds(
    Decide,
    subjects,
    st.sampled_from((*RECORD_CATEGORIES, "*")),
    st.sampled_from(("*", "ai-training")),
    st.just("withdrawn"),
    st.just(False),
    st.none(),
    st.none(),
)
windows = st.builds(
    Decide,
    subjects,
    st.sampled_from((*RECORD_CATEGORIES, "*")),
    st.sampled_from(("*", "ai-training")),
    st.just("granted"),
    st.just(True),
    st.integers(1, 120),
    st.integers(1, 120),
)
builds = st.builds(
    Build,
    st.sampled_from(DATASETS),
    st.sampled_from(BUILD_PURPOSES),
    st.lists(
        st.tuples(
            subjects,
            st.lists(st.sampled_from(RECORD_CATEGORIES), min_size=1, max_size=2, unique=True).map(
                tuple
            ),
        ),
        min_size=1,
        max_size=6,
    ).map(tuple),
)
waits = st.builds(Wait, st.integers(1, 300))
# Decisions and time passing weigh most: they are what obligations follow.
operations = st.one_of(
    decisions,
    waits,
    withdrawals,
    waits,
    windows,
    decisions,
    registrations,
    st.builds(Publish, st.sampled_from(tuple(POLICY_CHANGES))),
    builds,
    st.builds(
        Purge,
        st.integers(0, 5),
        st.lists(st.integers(0, 20), min_size=1, max_size=3).map(tuple),
    ),
    st.builds(Erase, subjects),
    st.builds(Retire, st.integers(0, 5)),
)
# Every subject registered, a few decisions and a build or two first, so that there are
# members; then anything.
histories = st.tuples(
    st.tuples(
        *(
            st.builds(Register, st.just(subject), st.sampled_from(JURISDICTIONS), st.just(False))
            for subject in SUBJECTS
        )
    ),
    st.lists(decisions, max_size=3),
    st.lists(builds, min_size=1, max_size=2),
    st.lists(operations, min_size=4, max_size=20),
).map(lambda parts: [operation for part in parts for operation in part])


# --- the brute force: SPEC §3.4 and §7.2, from the log entries -----------------------------


@dataclass
class Member:
    record_id: str
    ref: str
    categories: tuple[str, ...]


@dataclass
class RecordedBuild:
    dataset: str
    version: str
    purpose: str
    seq: int
    checked_at: int
    at: str
    members: dict[str, Member]
    retired: bool = False


@dataclass
class Log:
    """The log's entries, read back, and what the brute force needs of them."""

    entries: list[LogEntry]
    policies: dict[int, Policy] = field(default_factory=dict)

    def known(self, checked_at: int, instant: str) -> Iterator[LogEntry]:
        """What the ledger knew at `instant`: what the build was checked against and
        everything appended by then."""
        for entry in self.entries:
            if entry.seq < checked_at or entry.body["time"] <= instant:
                yield entry

    def policy(self, seq: int, document: dict[str, Any]) -> Policy:
        if seq not in self.policies:
            self.policies[seq] = Policy.from_document(document)
        return self.policies[seq]

    def eligible(self, build: RecordedBuild, member: Member, instant: str) -> bool:
        """Is every category of the member eligible for the build's purpose at `instant`?"""
        policy: Policy | None = None
        state: SubjectState | None = None
        found: list[Decision] = []
        for entry in self.known(build.checked_at, instant):
            kind, data = entry.body["kind"], entry.body["data"]
            if kind == "policy.published":
                policy = self.policy(entry.seq, data["policy"])
            if data.get("subject") != member.ref:
                continue
            if kind == "subject.registered":
                state = SubjectState(True, False, data["minor"], data["jurisdiction"])
            elif kind == "subject.updated":
                assert state is not None
                state = SubjectState(
                    True,
                    state.erased,
                    data.get("minor", state.minor),
                    data.get("jurisdiction", state.jurisdiction),
                )
            elif kind == "subject.erased":
                assert state is not None
                state = SubjectState(True, True, state.minor, state.jurisdiction)
            elif kind == "consent.recorded":
                found.append(
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
        assert policy is not None
        return all(
            evaluate_eligibility(policy, state, found, category, build.purpose, instant).eligible
            for category in member.categories
        )

    def stopped_at(self, build: RecordedBuild, member: Member, now: str) -> str | None:
        """When the member last stopped being eligible, if it is not eligible at `now`.

        Its answer changes only when an entry about its subject (or a policy) becomes
        known, or a decision takes effect or expires: it is constant in between. It was
        eligible when its build was checked (at `at`)."""
        instants: set[str] = set()
        for entry in self.entries:
            kind, data = entry.body["kind"], entry.body["data"]
            if data.get("subject") == member.ref or kind == "policy.published":
                if entry.seq >= build.checked_at:
                    instants.add(entry.body["time"])
                if kind == "consent.recorded":
                    instants.add(data["effective"])
                    if data["expires"] is not None:
                        instants.add(data["expires"])
        stopped, eligible = None, True
        for instant in sorted(t for t in instants if build.at < t <= now):
            now_eligible = self.eligible(build, member, instant)
            if eligible and not now_eligible:
                stopped = instant
            eligible = now_eligible
        assert eligible == self.eligible(build, member, now), "constant between instants"
        return None if eligible else stopped


# --- running a history ----------------------------------------------------------------------


def later(moment: str, minutes: int) -> str:
    return format_timestamp(parse_timestamp(moment) + timedelta(minutes=minutes))


Key = tuple[str, str, str | None]  # (dataset, version, record_id)


class Clock:
    """The instant T a history is at. A `ticking` clock is the ledger's clock too: each
    reading moves it on by a microsecond, as a real clock moves, except while `frozen`
    (while a step is compared, so that a listing reads T itself)."""

    def __init__(self, start: datetime, *, ticking: bool) -> None:
        self.moment = start
        self.ticking = ticking
        self.frozen = False

    def read(self) -> datetime:
        if self.ticking and not self.frozen:
            self.moment += timedelta(microseconds=1)
        return self.moment

    @property
    def now(self) -> str:
        return format_timestamp(self.moment)

    def advance(self, minutes: int) -> None:
        self.moment += timedelta(minutes=minutes)


class History:
    """One ledger, the operations applied to it, and what the test knows of them."""

    def __init__(self, ledger: ConsentLedger, clock: Clock) -> None:
        self.ledger = ledger
        self.clock = clock
        self.refs: dict[str, str] = {}
        self.erased: set[str] = set()
        self.policy_version = 1
        self.builds: list[RecordedBuild] = []
        self.purged: set[Key] = set()
        self.open: dict[Key, str] = {}  # what the last step found open: cause times
        self.steps: list[str] = []

    def apply(self, operation: object) -> None:
        self.steps.append(repr(operation))
        handler = getattr(self, f"_{type(operation).__name__.lower()}")
        handler(operation)

    @property
    def now(self) -> str:
        """T."""
        return self.clock.now

    def _register(self, op: Register) -> None:
        if op.subject in self.erased:
            return
        sealed = self.ledger.register_subject(
            op.subject, jurisdiction=op.jurisdiction, minor=op.minor, actor=ACTOR
        )
        if sealed is not None and op.subject not in self.refs:
            self.refs[op.subject] = sealed.entries[0].body["data"]["subject"]

    def _decide(self, op: Decide) -> None:
        if op.subject not in self.refs or op.subject in self.erased:
            return
        effective = None if op.effective is None else later(self.now, op.effective)
        expires = None if op.expires is None else later(effective or self.now, op.expires)
        request = DecisionRequest(
            op.category, op.decision, op.purpose, op.explicit, effective=effective, expires=expires
        )
        self.ledger.record_consents(op.subject, [request], actor=ACTOR)

    def _erase(self, op: Erase) -> None:
        if op.subject not in self.refs or op.subject in self.erased:
            return
        self.ledger.erase_subject(op.subject, actor=ACTOR)
        self.erased.add(op.subject)

    def _publish(self, op: Publish) -> None:
        document = default_policy().to_document()
        self.policy_version += 1
        document["version"] = self.policy_version
        POLICY_CHANGES[op.change](document)
        self.ledger.publish_policy(Policy.from_document(document), actor=ACTOR)

    def _build(self, op: Build) -> None:
        version = str(len(self.builds) + 1)
        items = [
            BuildItem(
                line,
                f"r{line}",
                subject,
                list(categories) if line % 2 else "|".join(categories),
            )
            for line, (subject, categories) in enumerate(op.records)
        ]
        with self.ledger.dataset_recorder(
            op.dataset, version, purpose=op.purpose, actor=ACTOR
        ) as recorder:
            answers = recorder.check(items)
            built = recorder.finish()
        summary = built.summary
        assert summary.seq is not None
        members = {}
        for item, answer in zip(items, answers, strict=True):
            if answer.to_json().get("eligible"):
                categories = op.records[item.line][1]
                subject = op.records[item.line][0]
                members[f"r{item.line}"] = Member(f"r{item.line}", self.refs[subject], categories)
        assert summary.records == len(members)
        self.builds.append(
            RecordedBuild(
                op.dataset,
                version,
                op.purpose,
                summary.seq,
                summary.checked_at,
                summary.at,
                members,
            )
        )

    def _live_builds(self) -> list[RecordedBuild]:
        return [build for build in self.builds if not build.retired]

    def _purge(self, op: Purge) -> None:
        live = [build for build in self._live_builds() if build.members]
        if not live:
            return
        build = live[op.build % len(live)]
        ordered = sorted(build.members)
        chosen = sorted({ordered[i % len(ordered)] for i in op.members})
        self.ledger.purge_records(build.dataset, build.version, chosen, actor=ACTOR)
        for record_id in chosen:
            del build.members[record_id]
            self.purged.add((build.dataset, build.version, record_id))

    def _retire(self, op: Retire) -> None:
        live = self._live_builds()
        if not live:
            return
        build = live[op.build % len(live)]
        self.ledger.retire_build(build.dataset, build.version, actor=ACTOR)
        for record_id in build.members:
            self.purged.add((build.dataset, build.version, record_id))
        build.members.clear()
        build.retired = True

    def _wait(self, op: Wait) -> None:
        self.clock.advance(op.minutes)

    # --- the comparison ----------------------------------------------------------------

    def read_log(self) -> Log:
        size = self.ledger.tree_size()
        entries: list[LogEntry] = []
        while len(entries) < size:
            entries += self.ledger.entries(len(entries), size - len(entries))
        return Log(entries)

    def expected_open(self) -> dict[Key, str]:
        log = self.read_log()
        expected: dict[Key, str] = {}
        for build in self._live_builds():
            for member in build.members.values():
                stopped = log.stopped_at(build, member, self.now)
                if stopped is not None:
                    expected[build.dataset, build.version, member.record_id] = stopped
        return expected

    def listed(self, status: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        recorded = {build.dataset for build in self.builds}
        for dataset in sorted(recorded):
            after = None
            while True:
                page = self.ledger.obligations(dataset, status=status, after=after, limit=2)
                found += page["obligations"]
                if page["next"] is None:
                    break
                after = page["next"]
        return found

    def check(self) -> None:
        """Sweep at T; the open obligations are the brute force's; verify passes."""
        self.clock.frozen = True
        try:
            self._compare()
        finally:
            self.clock.frozen = False

    def _compare(self) -> None:
        self.ledger.sweep_obligations(now=self.now)
        actual = {
            (o["dataset"], o["version"], o["record_id"]): o["cause_time"]
            for o in self.listed("open")
        }
        expected = self.expected_open()
        assert set(actual) == set(expected), self.explain(actual, expected)
        assert actual == expected, self.explain(actual, expected)
        assert not set(actual) & self.purged, "a purged record has an obligation again"
        closed = {
            status: {
                (o["dataset"], o["version"], o["record_id"], o["cause_time"])
                for o in self.listed(status)
            }
            for status in ("cancelled", "fulfilled")
        }
        for key, cause_time in self.open.items():
            if key in actual:
                continue
            dataset, version, record_id = key
            if key in self.purged:
                # Fulfilled by its purge or retirement (an erased subject's loses its id).
                assert {
                    (dataset, version, record_id, cause_time),
                    (dataset, version, None, cause_time),
                } & closed["fulfilled"], f"{key} purged, but its obligation is not fulfilled"
            else:
                assert (dataset, version, record_id, cause_time) in closed["cancelled"], (
                    f"{key} is eligible again, but its obligation was not cancelled"
                )
        self.open = actual
        try:
            self.ledger.verify()
        except VerificationError as exc:
            raise AssertionError(f"verify: {exc}\n{self.explain({}, {})}") from exc

    def check_purged_records_are_gone(self) -> None:
        for dataset, version, record_id in sorted(self.purged):
            assert record_id is not None
            with pytest.raises(NotFound):
                self.ledger.member_proof(dataset, version, record_id)

    def explain(self, actual: dict[Key, str], expected: dict[Key, str]) -> str:
        lines = [f"at T={self.now} after:", *(f"  {step}" for step in self.steps)]
        for key in sorted(set(actual) | set(expected), key=repr):
            if actual.get(key) != expected.get(key):
                lines.append(
                    f"  {key}: ledger {actual.get(key) or 'none'}, "
                    f"brute force {expected.get(key) or 'none'}"
                )
        return "\n".join(lines)


# --- fresh ledgers, one per example -----------------------------------------------------------

LedgerFactory = Callable[[], AbstractContextManager[ConsentLedger]]
ClockFactory = Callable[[], Clock]


def sqlite_ledgers(template: Path, directory: Path) -> LedgerFactory:
    @contextmanager
    def fresh() -> Iterator[ConsentLedger]:
        home = directory / uuid.uuid4().hex[:12]
        home.mkdir()
        shutil.copyfile(template, home / "ledger.db")
        settings = Settings(home=home / "home", database_url=f"sqlite:///{home / 'ledger.db'}")
        led, _ = ConsentLedger.initialize(settings, origin=TEST_ORIGIN, actor="test")
        try:
            yield led
        finally:
            led.close()
            shutil.rmtree(home, ignore_errors=True)

    return fresh


def postgres_ledgers(template: str, directory: Path) -> LedgerFactory:
    @contextmanager
    def fresh() -> Iterator[ConsentLedger]:
        name = f"cl_prop_{uuid.uuid4().hex[:12]}"
        admin = _admin_engine()
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
        home = directory / name
        led, _ = ConsentLedger.initialize(
            Settings(home=home, database_url=url), origin=TEST_ORIGIN, actor="test"
        )
        try:
            yield led
        finally:
            led.close()
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
            shutil.rmtree(home, ignore_errors=True)

    return fresh


@pytest.fixture(params=tuple(EXAMPLES))
def ledgers(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> tuple[str, LedgerFactory]:
    """A factory of fresh, initialised ledgers on one engine (one per example)."""
    if request.param == "sqlite":
        return request.param, sqlite_ledgers(sqlite_template, tmp_path)
    return request.param, postgres_ledgers(request.getfixturevalue("postgres_template"), tmp_path)


@pytest.fixture(params=("ticking", "ahead"))
def clocks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ClockFactory:
    """A history's clock, started afresh per example. `ticking`: the ledger's own clock
    (entries, checks, listings are dated by it), from 2030-01-01. `ahead`: a day ahead of
    the wall clock that dates the entries, as when a sweep is given a later `now` or
    another instance's clock is fast: entries are then dated before earlier sweeps."""
    if request.param == "ahead":
        return lambda: Clock(utc_now() + timedelta(days=1), ticking=False)
    current: list[Clock] = []
    for module in (tlog_log, service_checker, service_builds, service_datasets, service_reads):
        monkeypatch.setattr(module, "utc_now", lambda: current[-1].read())

    def start() -> Clock:
        current.append(Clock(datetime(2030, 1, 1, tzinfo=UTC), ticking=True))
        return current[-1]

    return start


def run_history(led: ConsentLedger, clock: Clock, operations: Sequence[object]) -> History:
    history = History(led, clock)
    history.check()
    for operation in operations:
        history.apply(operation)
        history.check()
    history.check_purged_records_are_gone()
    return history


def test_open_obligations_are_the_members_not_eligible_now(
    ledgers: tuple[str, LedgerFactory], clocks: ClockFactory
) -> None:
    engine, fresh = ledgers

    @settings(
        max_examples=EXAMPLES[engine],
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(operations=histories)
    def holds(operations: list[object]) -> None:
        clock = clocks()
        with fresh() as led:
            run_history(led, clock, operations)

    holds()


# --- examples the property found, or that it must keep covering ------------------------------


def test_regranting_cancels_an_open_obligation(
    ledgers: tuple[str, LedgerFactory], clocks: ClockFactory
) -> None:
    _, fresh = ledgers
    clock = clocks()
    with fresh() as led:
        history = run_history(
            led,
            clock,
            [
                Register("s0", "US", False),
                Build("posts", "ai-training", (("s0", ("content.public",)),)),
                Decide("s0", "content", "*", "withdrawn", False, None, None),
                Decide("s0", "content.public", "ai-training", "granted", False, None, None),
            ],
        )
        cancelled = led.obligations("posts", status="cancelled")["obligations"]
        assert [(o["record_id"], o["reason"]) for o in cancelled] == [("r0", "withdrawn")]
        assert history.open == {}


def test_an_expiring_grant_opens_an_obligation_when_swept_past_it(
    ledgers: tuple[str, LedgerFactory], clocks: ClockFactory
) -> None:
    _, fresh = ledgers
    clock = clocks()
    with fresh() as led:
        history = run_history(
            led,
            clock,
            [
                Register("s0", "DE", False),
                Decide("s0", "content.public", "ai-training", "granted", False, None, 30),
                Build("media", "ai-training", (("s0", ("content.public",)),)),
                Wait(29),
            ],
        )
        assert history.open == {}
        history.apply(Wait(1))
        history.check()
        listed = led.obligations("media", status="open")["obligations"]
        assert [(o["record_id"], o["reason"]) for o in listed] == [("r0", "expired")]


# --- disagreements found (SPEC §7.2 against the ledger): strict xfails until fixed ---------


def test_an_obligation_outlives_no_window_of_eligibility(
    ledgers: tuple[str, LedgerFactory], clocks: ClockFactory
) -> None:
    _, fresh = ledgers
    clock = clocks()
    with fresh() as led:
        run_history(
            led,
            clock,
            [
                Register("s0", "US", False),
                Build("posts", "ai-training", (("s0", ("content.public",)),)),
                Decide("s0", "content.public", "ai-training", "withdrawn", False, None, None),
                # Eligible again from T+10 to T+20 min; the next sweep is at T+60.
                Decide("s0", "content.public", "ai-training", "granted", False, 10, 10),
                Wait(60),
            ],
        )


def test_ledgers_in_one_process_keep_their_own_policies(
    ledgers: tuple[str, LedgerFactory],
) -> None:
    _, fresh = ledgers
    with fresh() as first, fresh() as second:
        # The same seq holds a policy that prohibits profile in the first ledger only.
        for led, change in ((first, "prohibit-profile"), (second, "none")):
            history = History(led, Clock(utc_now() + timedelta(days=1), ticking=False))
            history.apply(Publish(change))
            history.apply(Register("s0", "US", False))
            history.apply(Build("posts", "ai-training", (("s0", ("profile",)),)))
            history.apply(Decide("s0", "activity", "ai-training", "granted", False, None, None))
            history.check()


def test_a_build_checked_as_of_an_older_size_owes_what_came_since(
    ledgers: tuple[str, LedgerFactory],
) -> None:
    _, fresh = ledgers
    with fresh() as led:
        led.register_subject("s0", jurisdiction="US", actor=ACTOR)
        older = led.tree_size()
        led.record_consents("s0", [DecisionRequest("content.public", "withdrawn")], actor=ACTOR)
        with led.dataset_recorder("posts", "1", actor=ACTOR, as_of=older) as recorder:
            (answer,) = recorder.check([BuildItem(1, "r1", "s0", "content.public")])
            recorder.finish()
        assert answer.to_json()["eligible"] is True  # as of the older size

        listed = led.obligations("posts", status="open")["obligations"]

        assert [(o["record_id"], o["reason"]) for o in listed] == [("r1", "withdrawn")]


def test_a_build_is_not_checked_at_an_instant_still_to_come(
    ledgers: tuple[str, LedgerFactory],
) -> None:
    # Its obligations would run from that instant: withdrawals until then would be owed
    # nothing. Refused, with nothing recorded.
    _, fresh = ledgers
    with fresh() as led:
        led.register_subject("s0", jurisdiction="US", actor=ACTOR)
        size = led.tree_size()
        at = later(format_timestamp(utc_now()), 60)
        with pytest.raises(InvalidInput, match="instant that has come"):
            led.dataset_recorder("posts", "1", actor=ACTOR, at=at)
        assert led.tree_size() == size
