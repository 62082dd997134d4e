"""Figures derived from log entries, shared by the report builders and by verify-report.

Everything a report states about the log is computed here from entry bodies,
so `verify-report` recomputes it from the entries a report carries with the
very same code and compares: a figure that the evidence does not support fails.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ledger.consent.decisions import DEFAULT_PURPOSE
from ledger.consent.eligibility import (
    Decision,
    SubjectState,
    eligibility_matrix,
    evaluate_eligibility,
)
from ledger.consent.entries import DATASET_KINDS, SUBJECT_KINDS, EntryKind
from ledger.consent.policy import WILDCARD, Policy, ancestors
from ledger.errors import InvalidInput, VerificationError
from ledger.timestamps import format_timestamp, parse_timestamp

DECISION_KINDS = ("granted", "denied", "withdrawn")

# ISO/IEC TS 27560 consent records in the DPV profile (w3id.org/dpv/guides/consent-27560).
DPV_27560_RECORD = "https://w3id.org/dpv/schema/dpv-27560#record"
DPV_STATUS = {
    "granted": "dpv:ConsentGiven",
    "denied": "dpv:ConsentRefused",
    "withdrawn": "dpv:ConsentWithdrawn",
}

# Timeline granularity: (unit, length of the timestamp prefix that names a bucket).
_UNITS = (("minute", 16), ("hour", 13), ("day", 10), ("month", 7), ("year", 4))
MAX_BUCKETS = 60


def rate(part: int, whole: int) -> str | None:
    """A share as a decimal string (reports carry no floats: they have no canonical form)."""
    if whole == 0:
        return None
    return f"{part / whole:.4f}"


def decision_of(seq: int, data: Mapping[str, Any]) -> Decision:
    return Decision(
        seq=seq,
        category=data["category"],
        purpose=data["purpose"],
        decision=data["decision"],
        explicit=data["explicit"],
        effective=data["effective"],
        expires=data["expires"],
    )


@dataclass
class PolicyTimeline:
    """The policies published in the log, in order: which one was in force at a seq."""

    published: list[tuple[int, int, Policy]] = field(default_factory=list)  # seq, version

    def add(self, seq: int, data: Mapping[str, Any]) -> None:
        self.published.append((seq, int(data["version"]), Policy.from_document(data["policy"])))

    def at(self, seq: int) -> tuple[int, Policy] | None:
        """The policy in force for entry `seq` (the last published before it)."""
        found = None
        for published_seq, version, policy in self.published:
            if published_seq < seq:
                found = (version, policy)
            else:
                break
        return found


# --- subject reports ---------------------------------------------------------------------


def decision_row(seq: int, body: Mapping[str, Any], policy_version: int | None) -> dict[str, Any]:
    data = body["data"]
    return {
        "seq": seq,
        "recorded": body["time"],
        "category": data["category"],
        "purpose": data["purpose"],
        "decision": data["decision"],
        "explicit": data["explicit"],
        "method": data["method"],
        "notice": data["notice"],
        "effective": data["effective"],
        "expires": data["expires"],
        "policy_version": policy_version,
    }


def _mapped(policy: Policy | None, kind: str, name: str) -> list[str]:
    if policy is None:
        return []
    nodes = policy.category_nodes if kind == "category" else policy.purpose_nodes
    node = nodes.get(name)
    return list(node.maps_to.get("dpv", ())) if node is not None else []


def consent_record(
    origin: str, subject_ref: str, row: Mapping[str, Any], policy: Policy | None
) -> dict[str, Any]:
    """One decision as an ISO/IEC TS 27560 consent record, in the DPV-27560 profile's terms.

    Field names are the DPV guide's: `dpv:hasDataSubject` (pii principal id),
    `dpv:hasNotice` (privacy notice), `dpv:hasProcess` with `dpv:hasPurpose`,
    `dpv:hasPersonalData` (pii information) and `dpv:hasLegalBasis` (event type:
    expressed or explicitly expressed consent), `dpv:hasConsentStatus` (event
    state) with `dpv:isIndicatedAtTime` (event time), `dpv:hasDuration`
    (validity), `dpv:isIndicatedBy` (entity id) and `dpv:hasIndicationMethod`
    (expression method). Ledger names are kept as identifiers, with the DPV
    terms the policy maps them to.
    """
    category, purpose = row["category"], row["purpose"]
    duration: dict[str, Any] = (
        {"@type": "dpv:UntilTimeDuration", "rdf:value": row["expires"]}
        if row["expires"]
        else {"@type": "dpv:EndlessDuration"}
    )
    return {
        "@type": "dpv:ConsentRecord",
        "dct:conformsTo": DPV_27560_RECORD,
        "dct:identifier": f"{origin}/entries/{row['seq']}",
        "dct:created": row["recorded"],
        "dpv:hasDataSubject": subject_ref,
        "dpv:hasNotice": (
            {"@type": "dpv:ConsentNotice", "dct:identifier": row["notice"]}
            if row["notice"]
            else None
        ),
        "dpv:hasProcess": {
            "@type": "dpv:Process",
            "dpv:hasPurpose": {
                "dct:identifier": purpose,
                "skos:exactMatch": _mapped(policy, "purpose", purpose),
            },
            "dpv:hasPersonalData": {
                "dct:identifier": category,
                "skos:exactMatch": _mapped(policy, "category", category),
            },
            "dpv:hasLegalBasis": (
                "dpv:ExplicitlyExpressedConsent" if row["explicit"] else "dpv:ExpressedConsent"
            ),
            "dpv:hasDataController": origin,
        },
        "dpv:hasConsentStatus": {
            "@type": DPV_STATUS[row["decision"]],
            "dpv:isIndicatedAtTime": row["effective"],
            "dpv:hasDuration": duration,
            "dpv:isIndicatedBy": "dpv:DataSubject",
            "dpv:hasIndicationMethod": row["method"],
        },
        "consent-ledger:policyVersion": row["policy_version"],
    }


@dataclass
class SubjectFacts:
    """What a subject's own entries (and the policies published) say about them."""

    ref: str
    commitment: str | None = None
    registered_seq: int | None = None
    registered_time: str | None = None
    jurisdiction: str | None = None
    minor: bool = False
    erased: bool = False
    decisions: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # seq, body


def subject_facts(ref: str, bodies: Iterable[Mapping[str, Any]]) -> SubjectFacts:
    facts = SubjectFacts(ref=ref)
    for body in bodies:
        kind, data = body["kind"], body["data"]
        if data.get("subject") != ref:
            continue
        if kind == EntryKind.SUBJECT_REGISTERED:
            facts.commitment = data["commitment"]
            facts.registered_seq = body["seq"]
            facts.registered_time = body["time"]
            facts.jurisdiction = data["jurisdiction"]
            facts.minor = data["minor"]
        elif kind == EntryKind.SUBJECT_UPDATED:
            facts.jurisdiction = data.get("jurisdiction", facts.jurisdiction)
            facts.minor = data.get("minor", facts.minor)
        elif kind == EntryKind.SUBJECT_ERASED:
            facts.erased = True
        elif kind == EntryKind.CONSENT_RECORDED:
            facts.decisions.append((body["seq"], dict(body)))
    return facts


def facts_eligibility(policy: Policy, facts: SubjectFacts, at: str) -> list[dict[str, Any]]:
    """Eligibility for every category × purpose from a report's facts, as
    `ConsentLedger.subject_view` answers it."""
    state = SubjectState(
        registered=facts.registered_seq is not None,
        erased=facts.erased,
        minor=facts.minor,
        jurisdiction=facts.jurisdiction,
    )
    decisions = [decision_of(seq, body["data"]) for seq, body in facts.decisions]
    return eligibility_matrix(policy, state, decisions, at)


# --- period reports ----------------------------------------------------------------------


@dataclass
class _Subject:
    jurisdiction: str | None
    minor: bool
    erased: bool = False


class PeriodFigures:
    """Counts over a window of entries, fed in seq order.

    Subjects registered before the window are seeded with `prior` (their
    jurisdiction and minor flag at the window's start) and, when known, their
    earlier decisions; the regime of a decision is the regime of the subject's
    jurisdiction at that entry under the policy in force at that entry.

    `feed` runs once per entry of windows of millions: it only bumps one joint
    counter per decision; the marginal counts are summed from it at the end.
    """

    def __init__(
        self,
        policies: PolicyTimeline,
        prior: Mapping[str, tuple[str | None, bool]] | None = None,
        prior_decisions: Mapping[str, list[Decision]] | None = None,
    ) -> None:
        self.policies = policies
        self.subjects: dict[str, _Subject] = {
            ref: _Subject(jurisdiction, minor)
            for ref, (jurisdiction, minor) in (prior or {}).items()
        }
        self.decisions: dict[str, list[Decision]] = {
            ref: list(items) for ref, items in (prior_decisions or {}).items()
        }
        self.prior_used: set[str] = set()
        self._prior_refs = set(self.subjects)
        self._touched: set[str] = set()
        self.kinds: Counter[str] = Counter()
        # (category, purpose, decision, method, explicit, regime) -> count
        self.joint: Counter[tuple[str, str, str, str, bool, str]] = Counter()
        self.timeline_points: list[tuple[str, str, str]] = []  # effective, category, decision
        self.published: list[dict[str, Any]] = []
        self.first_time: str | None = None
        self.last_time: str | None = None
        self._current: tuple[int, Policy] | None = None
        self._next_policy = 0
        self._regimes: dict[str | None, str] = {}
        self.datasets = DatasetEntries()

    def _policy(self, seq: int) -> tuple[int, Policy] | None:
        published = self.policies.published
        while self._next_policy < len(published) and published[self._next_policy][0] < seq:
            version, policy = published[self._next_policy][1:]
            self._current = (version, policy)
            self._next_policy += 1
            self._regimes = {}
        return self._current

    def _regime(self, jurisdiction: str | None) -> str:
        regime = self._regimes.get(jurisdiction)
        if regime is None:
            current = self._current
            regime = current[1].regime_of(jurisdiction) if current is not None else "unknown"
            self._regimes[jurisdiction] = regime
        return regime

    def feed(self, seq: int, body: Mapping[str, Any]) -> None:
        kind = body["kind"]
        data = body["data"]
        time = body["time"]
        if self.first_time is None:
            self.first_time = time
        self.last_time = time
        self.kinds[kind] += 1
        if kind == EntryKind.CONSENT_RECORDED:
            ref = data["subject"]
            category, decision = data["category"], data["decision"]
            if ref not in self._touched:
                self._touched.add(ref)
                if ref in self._prior_refs:
                    self.prior_used.add(ref)
            if self._next_policy < len(self.policies.published):
                self._policy(seq)
            subject = self.subjects.get(ref)
            regime = self._regime(subject.jurisdiction if subject is not None else None)
            self.joint[
                (category, data["purpose"], decision, data["method"], data["explicit"], regime)
            ] += 1
            self.timeline_points.append((data["effective"], category, decision))
            decisions = self.decisions.get(ref)
            if decisions is None:
                decisions = self.decisions[ref] = []
            decisions.append(
                Decision(
                    seq,
                    category,
                    data["purpose"],
                    decision,
                    data["explicit"],
                    data["effective"],
                    data["expires"],
                )
            )
        elif kind == EntryKind.SUBJECT_REGISTERED:
            self.subjects[data["subject"]] = _Subject(data["jurisdiction"], data["minor"])
            self._touched.add(data["subject"])
        elif kind == EntryKind.SUBJECT_UPDATED:
            ref = data["subject"]
            if ref not in self._touched:
                self._touched.add(ref)
                if ref in self._prior_refs:
                    self.prior_used.add(ref)
            subject = self.subjects.setdefault(ref, _Subject(None, False))
            subject.jurisdiction = data.get("jurisdiction", subject.jurisdiction)
            subject.minor = data.get("minor", subject.minor)
        elif kind == EntryKind.SUBJECT_ERASED:
            ref = data["subject"]
            self._touched.add(ref)
            self.subjects.setdefault(ref, _Subject(None, False)).erased = True
            self.decisions.pop(ref, None)
        elif kind == EntryKind.POLICY_PUBLISHED:
            self.policies.add(seq, data)
            self._policy(seq + 1)
            self.published.append({"version": data["version"], "seq": seq, "time": time})
        elif kind in DATASET_KINDS:
            self.datasets.feed(seq, kind, time, data)

    def counts(self) -> dict[str, Any]:
        by_decision: Counter[str] = Counter()
        by_category: Counter[str] = Counter()
        by_purpose: Counter[str] = Counter()
        by_method: Counter[str] = Counter()
        by_regime: Counter[str] = Counter()
        by_category_decision: dict[str, Counter[str]] = {}
        by_regime_decision: dict[str, Counter[str]] = {}
        explicit = 0
        for (category, purpose, decision, method, is_explicit, regime), n in self.joint.items():
            by_decision[decision] += n
            by_category[category] += n
            by_purpose[purpose] += n
            by_method[method] += n
            by_regime[regime] += n
            if is_explicit:
                explicit += n
            by_category_decision.setdefault(category, Counter())[decision] += n
            by_regime_decision.setdefault(regime, Counter())[decision] += n
        total = sum(by_decision.values())
        return {
            "entries_by_kind": dict(sorted(self.kinds.items())),
            "decisions": {name: by_decision.get(name, 0) for name in DECISION_KINDS},
            "explicit": explicit,
            "by_category": dict(sorted(by_category.items())),
            "by_purpose": dict(sorted(by_purpose.items())),
            "by_method": dict(sorted(by_method.items())),
            "by_regime": dict(sorted(by_regime.items())),
            "by_category_decision": _nested(by_category_decision),
            "by_regime_decision": _nested(by_regime_decision),
            "withdrawal_rate": rate(by_decision["withdrawn"], total),
            "refusal_rate": rate(by_decision["denied"], total),
        }

    def timeline(self) -> dict[str, Any]:
        return timeline(self.timeline_points)

    def eligibility(self, at: str, end_seq: int) -> dict[str, Any] | None:
        """Share of subjects eligible per regime and category at the window's end.

        A subject's answer for a category that none of their decisions covers is
        the answer for a subject without decisions in the same regime (and minor
        or not), so only covered categories are evaluated one by one.
        """
        current = self._policy(end_seq)
        if current is None:
            return None
        version, policy = current
        purpose = DEFAULT_PURPOSE if DEFAULT_PURPOSE in policy.purpose_nodes else policy.purposes[0]
        purpose_names = {WILDCARD, *ancestors(purpose)}
        covered: dict[str, tuple[str, ...]] = {
            WILDCARD: policy.categories,
            **{
                name: tuple(c for c in policy.categories if c == name or c.startswith(name + "."))
                for name in policy.categories
            },
        }
        subjects: Counter[str] = Counter()
        eligible: dict[str, Counter[str]] = {regime: Counter() for regime in policy.regime_names}
        shared: dict[tuple[str, bool], frozenset[str]] = {}
        for ref, subject in self.subjects.items():
            if subject.erased:
                continue
            regime = policy.regime_of(subject.jurisdiction)
            subjects[regime] += 1
            counts = eligible[regime]
            state = SubjectState(
                registered=True,
                erased=False,
                minor=subject.minor,
                jurisdiction=subject.jurisdiction,
            )
            key = (regime, subject.minor)
            default = shared.get(key)
            if default is None:
                default = frozenset(
                    category
                    for category in policy.categories
                    if evaluate_eligibility(policy, state, (), category, purpose, at).eligible
                )
                shared[key] = default
            decisions = self.decisions.get(ref)
            if not decisions or (subject.minor and not policy.minors_eligible):
                counts.update(default)
                continue
            touched: set[str] = set()
            for decision in decisions:
                if decision.purpose in purpose_names:
                    touched.update(covered.get(decision.category, ()))
            counts.update(default - touched)
            for category in touched:
                if evaluate_eligibility(policy, state, decisions, category, purpose, at).eligible:
                    counts[category] += 1
        return {
            "purpose": purpose,
            "at": at,
            "policy_version": version,
            "categories": list(policy.categories),
            "subjects_by_regime": dict(sorted(subjects.items())),
            "eligible": {
                regime: {
                    category: eligible[regime].get(category, 0) for category in policy.categories
                }
                for regime in sorted(subjects)
            },
        }


def _nested(table: Mapping[str, Counter[str]]) -> dict[str, dict[str, int]]:
    return {
        key: {name: table[key].get(name, 0) for name in DECISION_KINDS} for key in sorted(table)
    }


def _parse(prefix: str, unit: str) -> datetime:
    if unit == "year":
        return datetime(int(prefix), 1, 1, tzinfo=UTC)
    if unit == "month":
        return datetime(int(prefix[:4]), int(prefix[5:7]), 1, tzinfo=UTC)
    text = {"day": prefix + "T00:00", "hour": prefix + ":00", "minute": prefix}[unit]
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _advance(moment: datetime, unit: str) -> datetime:
    if unit == "year":
        return moment.replace(year=moment.year + 1)
    if unit == "month":
        if moment.month == 12:
            return moment.replace(year=moment.year + 1, month=1)
        return moment.replace(month=moment.month + 1)
    step = {"day": timedelta(days=1), "hour": timedelta(hours=1), "minute": timedelta(minutes=1)}
    return moment + step[unit]


def _label(moment: datetime, width: int) -> str:
    # The log's own form, so that years before 1000 keep their four digits here too.
    return format_timestamp(moment)[:width]


def _bucket_keys(first: str, last: str) -> tuple[str, int, list[str]]:
    for unit, width in _UNITS:
        start, end = _parse(first[:width], unit), _parse(last[:width], unit)
        keys: list[str] = []
        moment = start
        while moment <= end and len(keys) <= MAX_BUCKETS:
            keys.append(_label(moment, width))
            moment = _advance(moment, unit)
        if len(keys) <= MAX_BUCKETS:
            return unit, width, keys
    # Centuries of backdated decisions: buckets for the years that occur only.
    unit, width = _UNITS[-1]
    return unit, width, []


def timeline(points: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
    """Decisions per time bucket (by the time they took effect), per decision and category."""
    if not points:
        return {
            "time": "effective",
            "unit": None,
            "buckets": [],
            "decisions": {name: [] for name in DECISION_KINDS},
            "by_category": {},
            "withdrawal_rate": [],
            "refusal_rate": [],
        }
    first = min(point[0] for point in points)
    last = max(point[0] for point in points)
    unit, width, keys = _bucket_keys(first, last)
    if not keys:
        keys = sorted({point[0][:width] for point in points})
    position = {key: index for index, key in enumerate(keys)}
    decisions = {name: [0] * len(keys) for name in DECISION_KINDS}
    by_category: dict[str, list[int]] = {}
    for effective, category, decision in points:
        index = position[effective[:width]]
        decisions[decision][index] += 1
        by_category.setdefault(category, [0] * len(keys))[index] += 1
    totals = [sum(decisions[name][i] for name in DECISION_KINDS) for i in range(len(keys))]
    return {
        "time": "effective",
        "unit": unit,
        "buckets": keys,
        "decisions": decisions,
        "by_category": dict(sorted(by_category.items())),
        "withdrawal_rate": [rate(decisions["withdrawn"][i], totals[i]) for i in range(len(keys))],
        "refusal_rate": [rate(decisions["denied"][i], totals[i]) for i in range(len(keys))],
    }


# --- datasets and purge obligations (SPEC §7) -------------------------------------------
#
# What a period report can prove about datasets, and what it can only state:
#
# - recomputed from the window's entries: builds recorded (and their records), purges
#   (records purged, obligations they fulfil by their own `fulfils`, voluntary removals),
#   retirements;
# - recomputed from the `fulfilments` the report lists, each checked against the entry
#   that closed it (a purge or retirement of the window, whose time is the fulfilment's):
#   obligations fulfilled, and the time from cause to purge (median, p95, max). The
#   obligations a purge closed must add up to its `fulfils`;
# - attested by the ledger's signature only: obligations opened, cancelled, open and
#   overdue at the end, and how many obligations a retirement closed. They rest on the
#   obligations table: members live outside the log, so the entries cannot show them.

# An obligation can be caused by an entry about a subject or by a policy publication.
CAUSE_KINDS = SUBJECT_KINDS | {EntryKind.POLICY_PUBLISHED.value}
CLOSING_KINDS = frozenset({EntryKind.DATASET_PURGED.value, EntryKind.DATASET_RETIRED.value})
SECOND = timedelta(seconds=1)


@dataclass
class DatasetActivity:
    """What the window's `dataset.*` entries say about one dataset."""

    versions_recorded: list[str] = field(default_factory=list)
    records_recorded: int = 0
    purges: int = 0
    records_purged: int = 0
    fulfils: int = 0
    versions_retired: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "recorded": {
                "builds": len(self.versions_recorded),
                "records": self.records_recorded,
                "versions": list(self.versions_recorded),
            },
            "purged": {
                "entries": self.purges,
                "records": self.records_purged,
                "fulfils": self.fulfils,
                "voluntary": self.records_purged - self.fulfils,
            },
            "retired": {
                "builds": len(self.versions_retired),
                "versions": list(self.versions_retired),
            },
        }


@dataclass(frozen=True, slots=True)
class Closing:
    """A `dataset.purged` or `dataset.retired` entry of the window: it fulfils obligations."""

    seq: int
    kind: str
    dataset: str
    version: str
    time: str
    fulfils: int | None  # a purge counts what it fulfilled; a retirement does not


class DatasetEntries:
    """The window's dataset entries, fed in seq order by `PeriodFigures.feed`."""

    def __init__(self) -> None:
        self.activity: dict[str, DatasetActivity] = {}
        self.closings: dict[int, Closing] = {}

    def feed(self, seq: int, kind: str, time: str, data: Mapping[str, Any]) -> None:
        dataset = data["dataset"]
        activity = self.activity.get(dataset)
        if activity is None:
            activity = self.activity[dataset] = DatasetActivity()
        if kind == EntryKind.DATASET_RECORDED:
            activity.versions_recorded.append(data["version"])
            activity.records_recorded += data["records"]
        elif kind == EntryKind.DATASET_PURGED:
            activity.purges += 1
            activity.records_purged += data["records"]
            activity.fulfils += data["fulfils"]
            self.closings[seq] = Closing(seq, kind, dataset, data["version"], time, data["fulfils"])
        else:
            activity.versions_retired.append(data["version"])
            self.closings[seq] = Closing(seq, kind, dataset, data["version"], time, None)


@dataclass(frozen=True, slots=True)
class ObligationFact:
    """One obligation as the ledger lists it, with the time its build was recorded."""

    dataset: str
    version: str
    build_time: str
    cause: int | None
    cause_time: str
    due: str
    status: str  # open, fulfilled or cancelled, as the ledger stands now
    closed_by: int | None
    closed_time: str | None

    @property
    def opened(self) -> str:
        # A build checked at an earlier instant may hold a record that had stopped being
        # eligible by the time it was recorded: its obligation exists from the recording.
        return max(self.cause_time, self.build_time)


def seconds_between(earlier: str, later: str) -> int:
    """Whole seconds from one log timestamp to another (rounded down)."""
    return (parse_timestamp(later) - parse_timestamp(earlier)) // SECOND


def nearest_rank(ordered: Sequence[int], percent: int) -> int:
    """The nearest-rank percentile of sorted values: always one of them, no interpolation."""
    rank = -(-percent * len(ordered) // 100)  # ceil(percent / 100 × n), in integers
    return ordered[max(rank, 1) - 1]


def duration_summary(durations: Counter[int]) -> dict[str, int | None]:
    """Count, median, 95th percentile and maximum of durations in seconds (nearest rank)."""
    ordered = sorted(durations.elements())
    if not ordered:
        return {"count": 0, "median": None, "p95": None, "max": None}
    return {
        "count": len(ordered),
        "median": nearest_rank(ordered, 50),
        "p95": nearest_rank(ordered, 95),
        "max": ordered[-1],
    }


def fulfilment_key(row: Mapping[str, Any]) -> tuple[int, str, int]:
    cause = row["cause"]
    return row["closed_by"], row["cause_time"], -1 if cause is None else cause


def fulfilment_figures(
    fulfilments: Sequence[Mapping[str, Any]], closings: Mapping[int, Closing]
) -> dict[str, dict[str, Any]]:
    """Per dataset: obligations fulfilled in the window and the time from cause to purge,
    from the `fulfilments` rows; each row's dataset and purge time are its closing
    entry's (`check_fulfilments` has checked that it is one)."""
    fulfilled: Counter[str] = Counter()
    durations: dict[str, Counter[int]] = {}
    for row in fulfilments:
        closing = closings[row["closed_by"]]
        fulfilled[closing.dataset] += row["count"]
        seconds = seconds_between(row["cause_time"], closing.time)
        durations.setdefault(closing.dataset, Counter())[seconds] += row["count"]
    return {
        dataset: {
            "fulfilled": fulfilled[dataset],
            "cause_to_purge_seconds": duration_summary(durations[dataset]),
        }
        for dataset in sorted(fulfilled)
    }


def check_fulfilments(
    fulfilments: Any,
    closings: Mapping[int, Closing],
    entries: Sequence[Mapping[str, Any]],
    first: int,
) -> str | None:
    """What is wrong with a report's `fulfilments` given its window's entries, or None.

    Every row names an entry of the window that closes obligations (a purge or a
    retirement), a cause before it and a cause time not after it; a cause inside
    the window is an entry that can cause one; rows are sorted and distinct; and the
    obligations closed by each purge add up to the `fulfils` its entry states.
    """
    if not isinstance(fulfilments, list):
        return "report.datasets.fulfilments is not a list"
    closed: Counter[int] = Counter()
    previous: tuple[int, str, int] | None = None
    for position, row in enumerate(fulfilments):
        where = f"report.datasets.fulfilments[{position}]"
        if (
            not isinstance(row, dict)
            or set(row) != {"closed_by", "cause", "cause_time", "count"}
            or not _whole(row["closed_by"])
            or not (row["cause"] is None or _whole(row["cause"]))
            or not isinstance(row["cause_time"], str)
            or not _whole(row["count"])
            or row["count"] < 1
        ):
            return f"{where} is not a fulfilment row {{closed_by, cause, cause_time, count}}"
        closing = closings.get(row["closed_by"])
        if closing is None:
            return (
                f"{where}.closed_by: entry {row['closed_by']} is not a purge or retirement "
                "in the window"
            )
        try:
            late = seconds_between(row["cause_time"], closing.time) < 0
        except InvalidInput as exc:
            return f"{where}.cause_time: {exc}"
        if late:
            return f"{where}.cause_time is after the purge that fulfilled it (entry {closing.seq})"
        cause = row["cause"]
        if cause is not None:
            if cause >= closing.seq:
                return f"{where}.cause: entry {cause} is not before entry {closing.seq}"
            if cause >= first and entries[cause - first]["kind"] not in CAUSE_KINDS:
                return (
                    f"{where}.cause: entry {cause} is a {entries[cause - first]['kind']}, "
                    "which causes no obligation"
                )
        key = fulfilment_key(row)
        if previous is not None and key <= previous:
            return f"{where} is out of order or repeated"
        previous = key
        closed[closing.seq] += row["count"]
    for closing in closings.values():
        if closing.fulfils is not None and closed[closing.seq] != closing.fulfils:
            return (
                f"report.datasets.fulfilments list {closed[closing.seq]} obligations fulfilled "
                f"by the purge in entry {closing.seq}, which says it fulfils {closing.fulfils}"
            )
    return None


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def datasets_at(window: Mapping[str, Any], generated_at: str) -> str:
    """The instant the end-of-period obligation states are for: the window's end, or the
    report's generation if the window ends later (or has no end)."""
    end = window["to"]
    return generated_at if end is None else min(end, generated_at)


def datasets_section(
    entries: DatasetEntries,
    obligations: Iterable[ObligationFact],
    *,
    start: str | None,
    first_seq: int,
    end_seq: int,
    at: str,
) -> dict[str, Any]:
    """The period report's `datasets` section: per dataset, what its entries say, its
    obligations (opened, fulfilled and cancelled in the window, open and overdue at `at`)
    and the time from cause to purge; and the `fulfilments` a verifier recomputes those
    from. Raises VerificationError if the ledger says a purge or retirement fulfilled an
    obligation that its entry cannot have (a report must not sign that)."""
    states: dict[str, Counter[str]] = {}
    grouped: Counter[tuple[int, int | None, str]] = Counter()
    for fact in obligations:
        counts = states.setdefault(fact.dataset, Counter())
        opened = fact.opened
        if opened < at and (start is None or opened >= start):
            counts["opened"] += 1
        closed_by = fact.closed_by
        if fact.status == "fulfilled" and closed_by is not None and closed_by < end_seq:
            # Fulfilled by an entry: the window's entries say whether it was in the window.
            if closed_by >= first_seq:
                closing = entries.closings.get(closed_by)
                if closing is None or (closing.dataset, closing.version) != (
                    fact.dataset,
                    fact.version,
                ):
                    raise VerificationError(
                        f"an obligation of {fact.dataset}@{fact.version} is fulfilled by entry "
                        f"{closed_by}, which is no purge or retirement of that build: run "
                        "`consent-ledger verify`",
                        subject="obligations",
                    )
                grouped[(closed_by, fact.cause, fact.cause_time)] += 1
            continue
        if opened >= at:
            continue
        if fact.status == "cancelled" and fact.closed_time is not None and fact.closed_time < at:
            if start is None or fact.closed_time >= start:
                counts["cancelled"] += 1
            continue
        counts["open_at_end"] += 1
        if fact.due < at:
            counts["overdue_at_end"] += 1
    fulfilments = sorted(
        (
            {"closed_by": closed_by, "cause": cause, "cause_time": cause_time, "count": count}
            for (closed_by, cause, cause_time), count in grouped.items()
        ),
        key=fulfilment_key,
    )
    recomputed = recomputed_dataset_figures(entries, fulfilments)
    names = set(recomputed) | {name for name, counts in states.items() if any(counts.values())}
    by_dataset: dict[str, Any] = {}
    for name in sorted(names):
        figures = recomputed.get(name) or quiet_dataset_figures()
        counts = states.get(name, Counter())
        by_dataset[name] = {
            "recorded": figures["recorded"],
            "purged": figures["purged"],
            "retired": figures["retired"],
            "obligations": {
                "opened": counts["opened"],
                "fulfilled": figures["fulfilled"],
                "cancelled": counts["cancelled"],
                "open_at_end": counts["open_at_end"],
                "overdue_at_end": counts["overdue_at_end"],
            },
            "cause_to_purge_seconds": figures["cause_to_purge_seconds"],
        }
    return {"at": at, "by_dataset": by_dataset, "fulfilments": fulfilments}


def quiet_dataset_figures() -> dict[str, Any]:
    """The recomputable figures of a dataset with no entry and no fulfilment in the window."""
    return {**DatasetActivity().to_json(), **_none_fulfilled()}


def _none_fulfilled() -> dict[str, Any]:
    return {"fulfilled": 0, "cause_to_purge_seconds": duration_summary(Counter())}


def recomputed_dataset_figures(
    entries: DatasetEntries, fulfilments: Sequence[Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per dataset with entries or fulfilments in the window, what a verifier recomputes:
    `recorded`, `purged`, `retired` from the entries, `fulfilled` and
    `cause_to_purge_seconds` from the (checked) `fulfilments`."""
    fulfilled = fulfilment_figures(fulfilments, entries.closings)
    derived: dict[str, dict[str, Any]] = {}
    for name in sorted(set(entries.activity) | set(fulfilled)):
        activity = entries.activity.get(name, DatasetActivity())
        derived[name] = {
            **activity.to_json(),
            **(fulfilled.get(name) or _none_fulfilled()),
        }
    return derived
