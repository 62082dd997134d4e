"""Pages of the change feed: entries, their effects and obligations, proven into a checkpoint."""

from __future__ import annotations

import base64
import threading
from binascii import b2a_base64
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from ledger.consent.effects import EffectEvaluator, PairEffect, policy_effect
from ledger.consent.eligibility import Decision, SubjectState
from ledger.consent.entries import SUBJECT_KINDS, EntryKind
from ledger.consent.policy import Policy
from ledger.errors import InvalidInput
from ledger.gcpause import no_gc
from ledger.store.db import IN_CLAUSE_LIMIT, in_chunks
from ledger.store.schema import (
    DatasetBuild,
    DatasetObligation,
    PolicyVersion,
)
from ledger.tlog import log, merkle
from ledger.tlog.log import DbNodeReader

# The most events one page holds (SPEC §8).
MAX_PAGE: Final = 10_000

_CONSENT = EntryKind.CONSENT_RECORDED.value
_REGISTERED = EntryKind.SUBJECT_REGISTERED.value
_ERASED = EntryKind.SUBJECT_ERASED.value
_POLICY = EntryKind.POLICY_PUBLISHED.value
# What an event says beside its entry's data; the data never uses these names.
_EVENT_FIELDS: Final = frozenset(
    {"seq", "kind", "time", "subject_id", "effect", "obligations", "canonical", "inclusion"}
)
_b64 = base64.b64encode


@dataclass(frozen=True, slots=True)
class ChangePage:
    """Events with seq in [after, next), and the checkpoint (of `tree_size`) proving them.

    `proof` is the range proof of all the events at once (`merkle.verify_range`); when
    the page was filtered by kind its events are not contiguous, so it is empty and
    each event carries its own `inclusion` proof instead.
    """

    after: int
    events: list[dict[str, Any]]
    next: int
    tree_size: int
    checkpoint: str
    proof: list[bytes] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "next": self.next,
            "tree_size": self.tree_size,
            "checkpoint": self.checkpoint,
            "proof": [_b64(node).decode() for node in self.proof],
        }

    def end_line(self) -> dict[str, Any]:
        """What ends a batch of the NDJSON stream: the page without its events."""
        line = self.to_json()
        del line["events"]
        return line


class _Subject:
    """A subject as the page goes through its entries: its state and decisions so far."""

    __slots__ = ("decisions", "row", "state")

    def __init__(self) -> None:
        self.row: tuple[str | None, bool, bool] | None = None  # jurisdiction, minor, erased
        self.state: SubjectState | None = None
        self.decisions: list[Decision] = []

    def set_row(self, jurisdiction: str | None, minor: bool, erased: bool) -> None:
        self.row = (jurisdiction, minor, erased)
        self.state = SubjectState(
            registered=True, erased=erased, minor=minor, jurisdiction=jurisdiction
        )


class FeedReader:
    """Reads pages; keeps the policies (immutable once published) it has parsed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # seq of the `policy.published` entry → (policy, its evaluator)
        self._policies: dict[int, tuple[Policy, EffectEvaluator]] = {}

    def page(
        self,
        session: Session,
        after: int,
        limit: int,
        *,
        kinds: Collection[str] | None = None,
    ) -> ChangePage:
        """The page after cursor `after` (a tree size), at most `limit` entries long."""
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise InvalidInput(
                f"the cursor must be a tree size (0 or more), got {after!r}", field="after"
            )
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be 1-{MAX_PAGE}, got {limit!r}", field="limit")
        checkpoint = log.latest_checkpoint(session)
        size = checkpoint.tree_size
        if after > size:
            raise InvalidInput(
                f"cursor {after} is beyond the log: its tree size is {size}", field="after"
            )
        end = min(after + limit, size)
        entries = _read_entries(session, after, end)
        # A page makes ~20 objects per event, all alive until it is sent: collections in
        # between would rescan them for nothing (a fifth of a page's time, measured).
        with no_gc():
            events = self._events(session, after, end, entries)
        if kinds is not None:
            wanted = frozenset(kinds)
            events = [event for event in events if event["kind"] in wanted]
            reader = DbNodeReader(session)
            for event in events:
                event["inclusion"] = [
                    _b64(node).decode()
                    for node in merkle.inclusion_proof(reader, event["seq"], size)
                ]
            proof: list[bytes] = []
        else:
            proof = merkle.range_proof(DbNodeReader(session), after, end, size) if events else []
        return ChangePage(after, events, end, size, checkpoint.note, proof)

    # --- events ------------------------------------------------------------------------

    def _events(
        self,
        session: Session,
        after: int,
        end: int,
        entries: list[tuple[int, str, str | None, bytes]],
    ) -> list[dict[str, Any]]:
        if not entries:
            return []
        refs = {ref for _, _, ref, _ in entries if ref is not None}
        # A subject registered in this page has no decisions before it.
        deciding = refs - {ref for _, kind, ref, _ in entries if kind == _REGISTERED}
        subjects = _subjects_before(session, refs, deciding, after)
        subject_ids = _subject_ids(session, refs)
        obligations = _obligations(session, after, end)
        policies = self._policies_before(session, end)
        policy_seqs = [seq for seq, _ in policies]
        current = _policy_index(policy_seqs, after)
        events: list[dict[str, Any]] = []
        append = events.append
        loads = orjson.loads
        for seq, _, ref, canonical in entries:
            body = loads(canonical)
            kind = body["kind"]
            data = body["data"]
            time = body["time"]
            while current + 1 < len(policies) and policies[current + 1][0] < seq:
                current += 1
            evaluator = policies[current][1] if current >= 0 else None
            if kind == _POLICY:
                previous = evaluator.policy if evaluator is not None else None
                new = self._evaluator(seq, data["policy"]).policy
                effect: list[dict[str, Any]] = [
                    {"category": category, "purpose": purpose}
                    for category, purpose in policy_effect(previous, new)
                ]
            elif ref is not None and kind in SUBJECT_KINDS and evaluator is not None:
                turned = _subject_effect(evaluator, subjects[ref], seq, kind, data, time)
                effect = _effect_json(turned) if turned else []
            else:
                effect = []
            event = {
                "seq": seq,
                "kind": kind,
                "time": time,
                "subject_id": None if ref is None else subject_ids.get(ref),
                "subject": ref,
            }
            event.update(data if not _EVENT_FIELDS.intersection(data) else _renamed(data))
            event["effect"] = effect
            event["obligations"] = obligations.get(seq, [])
            event["canonical"] = b2a_base64(canonical, newline=False).decode()
            append(event)
        return events

    def _evaluator(self, seq: int, document: Any) -> EffectEvaluator:
        with self._lock:
            known = self._policies.get(seq)
        if known is None:
            if isinstance(document, str):
                document = orjson.loads(document)
            policy = Policy.from_document(document)
            known = (policy, EffectEvaluator(policy))
            with self._lock:
                self._policies[seq] = known
        return known[1]

    def _policies_before(self, session: Session, end: int) -> list[tuple[int, EffectEvaluator]]:
        """Every policy published before `end`, by seq, with its evaluator."""
        with self._lock:
            known = set(self._policies)
        seqs = sorted(
            session.execute(
                select(col(PolicyVersion.seq)).where(col(PolicyVersion.seq) < end)
            ).scalars()
        )
        missing = [seq for seq in seqs if seq not in known]
        documents: dict[int, str] = {}
        for chunk in in_chunks(missing):
            rows = session.execute(
                select(col(PolicyVersion.seq), col(PolicyVersion.document)).where(
                    col(PolicyVersion.seq).in_(chunk)
                )
            )
            documents.update((seq, document) for seq, document in rows)
        return [(seq, self._evaluator(seq, documents.get(seq))) for seq in seqs]


# Effects repeat (the same registration's, the same withdrawal's): their JSON is shared.
_EFFECT_JSON: dict[tuple[PairEffect, ...], list[dict[str, object]]] = {}
_EFFECT_JSON_LIMIT = 4096


def _effect_json(effect: tuple[PairEffect, ...]) -> list[dict[str, object]]:
    # Read-only once made: events only ever get serialised.
    known = _EFFECT_JSON.get(effect)
    if known is None:
        if len(_EFFECT_JSON) >= _EFFECT_JSON_LIMIT:
            _EFFECT_JSON.clear()
        known = _EFFECT_JSON[effect] = [item.to_json() for item in effect]
    return known


def _renamed(data: dict[str, Any]) -> dict[str, Any]:
    # No kind's data uses an event field's name today; if one ever does, its value stays
    # in the event under `data.<name>` rather than being overwritten.
    return {(f"data.{key}" if key in _EVENT_FIELDS else key): value for key, value in data.items()}


def _policy_index(seqs: Sequence[int], seq: int) -> int:
    # The index of the last policy published before `seq`, -1 if none.
    index = -1
    for position, published in enumerate(seqs):
        if published < seq:
            index = position
    return index


def _subject_effect(
    evaluator: EffectEvaluator,
    subject: _Subject,
    seq: int,
    kind: str,
    data: dict[str, Any],
    time: str,
) -> tuple[PairEffect, ...]:
    """The entry's effect, and the subject moved past it."""
    if kind == _CONSENT:
        decision = Decision(
            seq=seq,
            category=data["category"],
            purpose=data["purpose"],
            decision=data["decision"],
            explicit=bool(data["explicit"]),
            effective=data["effective"],
            expires=data["expires"],
        )
        if decision.effective <= time:
            effect = evaluator.decision_effect(subject.state, subject.decisions, decision, time)
        else:
            # Dated later than its entry (a platform's clock ahead of the ledger's, a
            # withdrawal from next month): it changes answers when it takes effect, and no
            # later entry will say so. Announced now, holding from then.
            effect = tuple(
                item._replace(since=decision.effective)
                for item in evaluator.decision_effect(
                    subject.state, subject.decisions, decision, decision.effective
                )
            )
        subject.decisions.append(decision)
        return effect
    old_state = subject.state
    if kind == _REGISTERED or subject.row is None:
        jurisdiction, minor = data.get("jurisdiction"), bool(data.get("minor", False))
    else:
        jurisdiction = data.get("jurisdiction", subject.row[0])
        minor = bool(data.get("minor", subject.row[1]))
    subject.set_row(jurisdiction, minor, kind == _ERASED)
    new_state = subject.state
    assert new_state is not None
    effect = evaluator.state_effect(old_state, new_state, subject.decisions, time)
    # Decisions still to take effect change answers later under the old state; what the
    # new state changes about them is announced with the instant it holds from.
    pending = sorted({d.effective for d in subject.decisions if d.effective > time})
    for instant in pending:
        effect += tuple(
            item._replace(since=instant)
            for item in evaluator.state_effect(old_state, new_state, subject.decisions, instant)
        )
    return effect


# --- reads ------------------------------------------------------------------------------


def _read_entries(
    session: Session, start: int, end: int
) -> list[tuple[int, str, str | None, bytes]]:
    """(seq, kind, subject ref, canonical bytes) of entries start … end - 1."""
    if start >= end:
        return []
    # The driver's cursor directly: SQLAlchemy's per-row processing would cost more than
    # the rest of an event's preparation.
    conn = session.connection()
    placeholder = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    cursor = conn.connection.cursor()
    try:
        cursor.execute(
            "SELECT seq, kind, subject, canonical FROM log_entries "
            f"WHERE seq >= {placeholder} AND seq < {placeholder} ORDER BY seq",
            (start, end),
        )
        rows = cursor.fetchall()
    finally:
        cursor.close()
    if len(rows) != end - start:
        raise InvalidInput(f"entries {start}..{end - 1} are incomplete: run `verify`")
    return [(seq, kind, ref, bytes(canonical)) for seq, kind, ref, canonical in rows]


def _rows_for_refs(
    session: Session, sql: str, refs: Collection[str], *params: object
) -> Iterator[tuple[Any, ...]]:
    """Rows of `sql` for subject refs: `{refs}` in it becomes the refs' condition.

    The driver's cursor, not SQLAlchemy: a page names up to 10,000 subjects, and compiling
    expanding `IN` lists cost more than the queries. PostgreSQL takes them as one array;
    SQLite as lists of bound parameters.
    """
    if not refs:
        return
    conn = session.connection()
    cursor = conn.connection.cursor()
    try:
        if conn.dialect.name == "postgresql":
            cursor.execute(sql.format(refs="= ANY(%s)").replace("?", "%s"), (list(refs), *params))
            yield from cursor.fetchall()
            return
        ordered = sorted(refs)
        for start in range(0, len(ordered), IN_CLAUSE_LIMIT):
            chunk = ordered[start : start + IN_CLAUSE_LIMIT]
            cursor.execute(sql.format(refs=f"IN ({','.join('?' * len(chunk))})"), (*chunk, *params))
            yield from cursor.fetchall()
    finally:
        cursor.close()


def _subjects_before(
    session: Session, refs: Collection[str], deciding: Collection[str], before: int
) -> dict[str, _Subject]:
    """Each subject's latest attributes and (for `deciding`, the subjects whose entries in
    the page need them) every decision, from entries before `before`."""
    subjects = {ref: _Subject() for ref in refs}
    versions = _rows_for_refs(
        session,
        "SELECT ref, jurisdiction, minor, erased FROM subject_versions "
        "WHERE ref {refs} AND seq < ? ORDER BY ref, seq",
        refs,
        before,
    )
    for ref, jurisdiction, minor, erased in versions:
        subjects[ref].set_row(jurisdiction, bool(minor), bool(erased))
    decisions = _rows_for_refs(
        session,
        "SELECT ref, seq, category, purpose, decision, explicit, effective, expires "
        "FROM consent_decisions WHERE ref {refs} AND seq < ? ORDER BY ref, seq",
        deciding,
        before,
    )
    for ref, seq, category, purpose, decision, explicit, effective, expires in decisions:
        subjects[ref].decisions.append(
            Decision(seq, category, purpose, decision, bool(explicit), effective, expires)
        )
    return subjects


def _subject_ids(session: Session, refs: Collection[str]) -> dict[str, str]:
    """The platform's ids of the subjects still mapped (an erased one has none)."""
    rows = _rows_for_refs(session, "SELECT ref, subject_id FROM subjects WHERE ref {refs}", refs)
    return dict(rows)


def _obligations(session: Session, start: int, end: int) -> dict[int, list[dict[str, Any]]]:
    """The obligations each entry in [start, end) opened, by build: seq → items."""
    if session.execute(select(col(DatasetBuild.seq)).limit(1)).first() is None:
        return {}  # no build was ever recorded: nothing to look up
    rows = session.execute(
        select(
            col(DatasetObligation.cause),
            col(DatasetBuild.dataset),
            col(DatasetBuild.version),
            func.count(),
        )
        .join(DatasetBuild, col(DatasetBuild.seq) == col(DatasetObligation.build))
        .where(col(DatasetObligation.cause) >= start, col(DatasetObligation.cause) < end)
        .group_by(
            col(DatasetObligation.cause), col(DatasetBuild.dataset), col(DatasetBuild.version)
        )
        .order_by(
            col(DatasetObligation.cause), col(DatasetBuild.dataset), col(DatasetBuild.version)
        )
    )
    opened: dict[int, list[dict[str, Any]]] = {}
    for cause, dataset, version, records in rows:
        if cause is None:  # a time-driven obligation (an expiry) has no cause entry
            continue
        opened.setdefault(cause, []).append(
            {"dataset": dataset, "version": version, "records": records}
        )
    return opened
