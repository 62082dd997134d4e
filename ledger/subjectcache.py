"""An in-process cache of subjects' eligibility inputs, kept current from the log.

Eligibility needs, per subject, its attribute versions and its decisions.
Both only ever grow (they are projections of an append-only log), so a cache
that holds every row up to tree size S stays exact by applying the rows with
seq in [S, N) when the log reaches N — one indexed range read, however many
subjects are cached. Answers for any `as_of` ≤ S come from filtering by seq.

What is never cached: ids that are not (or no longer) registered — they may be
registered later, and erased ids are answered from the database's keyed hashes.
An erasure drops the subject from the cache, so no process memory keeps the
link between an erased id and the log either.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from ledger.eligibility import Decision, SubjectState
from ledger.schema import ConsentDecision, SubjectMapping, SubjectVersion

_IN_CHUNK = 900


@dataclass(slots=True)
class _Subject:
    ref: str
    # (seq, jurisdiction, minor, erased), in seq order
    versions: list[tuple[int, str | None, bool, bool]] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    current_seq: int = -1
    current: SubjectState | None = None

    def state_at(self, as_of: int) -> SubjectState | None:
        if self.versions and self.versions[-1][0] < as_of:
            # The common case (as_of at or near the head): one state, built once.
            last = self.versions[-1]
            if self.current is None or self.current_seq != last[0]:
                self.current = SubjectState(
                    registered=True, erased=last[3], minor=last[2], jurisdiction=last[1]
                )
                self.current_seq = last[0]
            return self.current
        latest = None
        for version in self.versions:
            if version[0] >= as_of:
                break
            latest = version
        if latest is None:
            return None
        return SubjectState(
            registered=True, erased=latest[3], minor=latest[2], jurisdiction=latest[1]
        )

    def decisions_at(self, as_of: int) -> list[Decision]:
        if not self.decisions or self.decisions[-1].seq < as_of:
            return self.decisions
        return [decision for decision in self.decisions if decision.seq < as_of]


class SubjectCache:
    def __init__(self, max_subjects: int = 200_000) -> None:
        self._max = max_subjects
        self._lock = threading.Lock()
        self._size = -1  # the tree size every cached subject is complete up to
        self._by_id: dict[str, _Subject] = {}
        self._id_of_ref: dict[str, str] = {}

    def lookup(
        self, session: Session, subject_ids: Iterable[str], as_of: int, tree_size: int
    ) -> tuple[dict[str, SubjectState], dict[str, list[Decision]]]:
        """States and decisions of the registered ids among `subject_ids`, as of `as_of`.

        `session` is a snapshot at `tree_size` (≥ `as_of`).
        """
        with self._lock:
            if self._size < tree_size:
                self._advance(session, tree_size)
            cacheable = self._size == tree_size
            found = {sid: self._by_id[sid] for sid in subject_ids if sid in self._by_id}
        missing = [sid for sid in subject_ids if sid not in found]
        if missing:
            loaded = _load(session, missing, tree_size)
            found.update(loaded)
            if cacheable:
                with self._lock:
                    if self._size == tree_size:
                        self._remember(loaded)
        states: dict[str, SubjectState] = {}
        decisions: dict[str, list[Decision]] = {}
        for subject_id, subject in found.items():
            state = subject.state_at(as_of)
            if state is not None:
                states[subject_id] = state
                decisions[subject_id] = subject.decisions_at(as_of)
        return states, decisions

    def _remember(self, loaded: dict[str, _Subject]) -> None:
        if len(self._by_id) + len(loaded) > self._max:
            # Crude but bounded: start over rather than track recency per hit.
            self._by_id.clear()
            self._id_of_ref.clear()
        for subject_id, subject in loaded.items():
            self._by_id[subject_id] = subject
            self._id_of_ref[subject.ref] = subject_id

    def _advance(self, session: Session, tree_size: int) -> None:
        start = self._size
        if start < 0 or not self._by_id:
            self._size = tree_size
            return
        for ref, seq, jurisdiction, minor, erased in session.execute(
            select(
                col(SubjectVersion.ref),
                col(SubjectVersion.seq),
                col(SubjectVersion.jurisdiction),
                col(SubjectVersion.minor),
                col(SubjectVersion.erased),
            )
            .where(col(SubjectVersion.seq) >= start, col(SubjectVersion.seq) < tree_size)
            .order_by(col(SubjectVersion.seq))
        ):
            subject_id = self._id_of_ref.get(ref)
            if subject_id is None:
                continue
            if erased:
                del self._by_id[subject_id]
                del self._id_of_ref[ref]
            else:
                self._by_id[subject_id].versions.append((seq, jurisdiction, minor, erased))
        for row in session.execute(
            _decision_query()
            .where(col(ConsentDecision.seq) >= start, col(ConsentDecision.seq) < tree_size)
            .order_by(col(ConsentDecision.seq))
        ):
            subject_id = self._id_of_ref.get(row.ref)
            if subject_id is not None:
                self._by_id[subject_id].decisions.append(_decision(row))
        self._size = tree_size


def _decision_query() -> Any:
    return select(
        col(ConsentDecision.ref),
        col(ConsentDecision.seq),
        col(ConsentDecision.category),
        col(ConsentDecision.purpose),
        col(ConsentDecision.decision),
        col(ConsentDecision.explicit),
        col(ConsentDecision.effective),
        col(ConsentDecision.expires),
    )


def _decision(row: Any) -> Decision:
    return Decision(
        seq=row.seq,
        category=row.category,
        purpose=row.purpose,
        decision=row.decision,
        explicit=row.explicit,
        effective=row.effective,
        expires=row.expires,
    )


def _load(session: Session, subject_ids: list[str], tree_size: int) -> dict[str, _Subject]:
    """Full histories (below `tree_size`) of the registered ids, in grouped queries."""
    subjects: dict[str, _Subject] = {}
    id_of_ref: dict[str, str] = {}
    for chunk in _chunks(subject_ids):
        for subject_id, ref in session.execute(
            select(col(SubjectMapping.subject_id), col(SubjectMapping.ref)).where(
                col(SubjectMapping.subject_id).in_(chunk)
            )
        ):
            subjects[subject_id] = _Subject(ref=ref)
            id_of_ref[ref] = subject_id
    refs = list(id_of_ref)
    for chunk in _chunks(refs):
        for ref, seq, jurisdiction, minor, erased in session.execute(
            select(
                col(SubjectVersion.ref),
                col(SubjectVersion.seq),
                col(SubjectVersion.jurisdiction),
                col(SubjectVersion.minor),
                col(SubjectVersion.erased),
            )
            .where(col(SubjectVersion.ref).in_(chunk), col(SubjectVersion.seq) < tree_size)
            .order_by(col(SubjectVersion.seq))
        ):
            subjects[id_of_ref[ref]].versions.append((seq, jurisdiction, minor, erased))
        for row in session.execute(
            _decision_query()
            .where(col(ConsentDecision.ref).in_(chunk), col(ConsentDecision.seq) < tree_size)
            .order_by(col(ConsentDecision.seq))
        ):
            subjects[id_of_ref[row.ref]].decisions.append(_decision(row))
    # A mapping without versions below tree_size was registered by a write this
    # snapshot cannot see yet: leave it out rather than cache it half-built.
    return {sid: subject for sid, subject in subjects.items() if subject.versions}


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start : start + _IN_CHUNK]
