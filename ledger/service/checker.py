"""Eligibility checks: one, one from memory, or many at one tree size in a fixed number of queries.

These are the ledger's hot paths (a dataset build asks millions of times), so
what every check at a tree size shares — the policy and the checkpoint — is
computed once per size, subjects come from `SubjectCache`, and the inner loops
bind what they call to locals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from sqlmodel import col

from ledger.consent.decisions import DEFAULT_PURPOSE
from ledger.consent.eligibility import BatchEvaluator, Decision, SubjectState
from ledger.consent.policy import Policy
from ledger.consent.subjects import MAX_SUBJECT_ID, erased_id_hash, validate_subject_id
from ledger.errors import InvalidInput
from ledger.service.head import HeadSnapshot, HeadTracker
from ledger.service.policies import PolicyCache
from ledger.service.subjectcache import SubjectCache
from ledger.service.views import CheckBatch, CheckItem, CheckRequest, EligibilityAnswer
from ledger.store.db import in_chunks, read_session
from ledger.store.schema import ErasedSubject
from ledger.timestamps import format_timestamp, normalize_timestamp, utc_now
from ledger.tlog import log

# Per tree size: the policy in force and the checkpoint answers are provable against.
_MAX_CONTEXTS = 4096


@dataclass(frozen=True, slots=True)
class _SizeContext:
    """What every check at one tree size shares: immutable once the size is committed."""

    policy_version: int
    policy: Policy
    checkpoint: str


class _NeedsDatabase(Exception):
    """Raised by `_MEMORY_ONLY` when an answer cannot come from memory alone."""


class _MemoryOnly:
    """Stands in for a session where only cached data may be used: any use raises."""

    def __getattr__(self, name: str) -> Any:
        raise _NeedsDatabase(name)


_MEMORY_ONLY: Any = _MemoryOnly()


class Checker:
    """Answers eligibility checks (SPEC §3.4) from the log's projections."""

    def __init__(
        self,
        engine: Engine,
        head: HeadTracker,
        policies: PolicyCache,
        erasure_secret: Callable[[], bytes],
        *,
        cache_bytes: int,
    ) -> None:
        self._engine = engine
        self._head = head
        # Bound once: the check paths call them on every request.
        self._head_nowait = head.head_nowait
        self._head_is_local = head.is_local
        self._saw_tree_size = head.saw_tree_size
        self._policies = policies
        self._erasure_secret = erasure_secret
        self.subjects = SubjectCache(max_bytes=cache_bytes)
        self._contexts: dict[int, _SizeContext] = {}

    def check(
        self,
        subject_id: object,
        category: object,
        purpose: object = None,
        *,
        as_of: int | None = None,
        at: str | None = None,
        at_least_as_fresh: int | None = None,
    ) -> EligibilityAnswer:
        """May this subject's data of this category be used for this purpose?"""
        batch = self.check_many(
            [CheckRequest(subject_id, category, purpose)],
            as_of=as_of,
            at=at,
            at_least_as_fresh=at_least_as_fresh,
        )
        result = batch.results[0]
        if isinstance(result, InvalidInput):
            raise result
        return EligibilityAnswer(
            eligible=result.eligible,
            reason=result.reason,
            decided_by=result.decided_by,
            policy_version=batch.policy_version,
            checked_at=batch.checked_at,
            at=batch.at,
        )

    def check_from_memory(
        self,
        subject_id: object,
        category: object,
        purpose: object = None,
        *,
        as_of: int | None = None,
        at: str | None = None,
        at_least_as_fresh: int | None = None,
        head: HeadSnapshot | None = None,
    ) -> EligibilityAnswer | None:
        """`check`, answered without a query beyond `head()`, or None when it needs one.

        It answers only when the subject, the policy and the checkpoint at the
        tree size are already in memory; then the answer is the one `check`
        gives at that tree size. Invalid input raises, as in `check`.
        """
        moment = _now() if at is None else normalize_timestamp(at, field="at")
        head = head or self._head_nowait()
        if head is None:
            return None
        size = head.tree_size
        wanted = as_of if as_of is not None else at_least_as_fresh
        if isinstance(wanted, int) and wanted > size:
            # Perhaps only our view is behind: one fresh read, else the full path.
            fresh = self._head_nowait(max_age=0.0) if self._head_is_local else None
            if fresh is None:
                return None
            size = fresh.tree_size
        if as_of is None:
            if at_least_as_fresh is not None and at_least_as_fresh > size:
                return None
            checked_at = size
        elif isinstance(as_of, bool) or not isinstance(as_of, int) or not 1 <= as_of <= size:
            return None  # the full path names the error with the real tree size
        else:
            checked_at = as_of
        context = self._contexts.get(checked_at)
        if context is None:
            return None
        parsed = _parse_checks([(subject_id, category, purpose)], context.policy, DEFAULT_PURPOSE)
        item = parsed[0]
        if isinstance(item, InvalidInput):
            raise item
        try:
            states, decisions = self.subjects.lookup(_MEMORY_ONLY, [item[0]], checked_at, size)
        except _NeedsDatabase:
            return None
        state = states.get(item[0])
        if state is None:
            return None  # unknown or erased: the database says which
        result = BatchEvaluator(context.policy, moment).evaluate(
            state, decisions.get(item[0], ()), item[1], item[2]
        )
        return EligibilityAnswer(
            eligible=result.eligible,
            reason=result.reason,
            decided_by=result.decided_by,
            policy_version=context.policy_version,
            checked_at=checked_at,
            at=moment,
        )

    def check_many(
        self,
        requests: Sequence[CheckItem],
        *,
        purpose: object = None,
        as_of: int | None = None,
        at: str | None = None,
        at_least_as_fresh: int | None = None,
        with_subjects: bool = False,
    ) -> CheckBatch:
        """Evaluate many checks at one tree size and time with a fixed number of queries.

        `requests` are `CheckRequest`s or plain (subject_id, category, purpose)
        tuples. A bad item gets its own InvalidInput in `results`; it never fails
        the batch. `at_least_as_fresh` (a write's token) waits briefly for a
        lagging replica to reach that tree size, then gives up with NotFresh.
        `with_subjects`: the batch also carries each registered subject's reference
        and decisions (what a dataset build records).
        """
        moment = _now() if at is None else normalize_timestamp(at, field="at")
        # A replica behind a write's token waits briefly to catch up. An `as_of`
        # beyond the log is the caller's mistake (422): it names an exact tree.
        if as_of is None and at_least_as_fresh is not None:
            self._head.await_tree_size(at_least_as_fresh)
        with read_session(self._engine) as session:
            size = log.tree_size(session)
            checked_at = size if as_of is None else as_of
            if isinstance(checked_at, bool) or not isinstance(checked_at, int):
                raise InvalidInput("must be an integer tree size", field="as_of")
            if not 1 <= checked_at <= size:
                raise InvalidInput(
                    f"must be a tree size between 1 and {size}, got {checked_at}", field="as_of"
                )
            context = self._context_at(session, checked_at)
            default_purpose = DEFAULT_PURPOSE if purpose is None else purpose
            parsed = _parse_checks(requests, context.policy, default_purpose)
            subject_ids = {item[0] for item in parsed if not isinstance(item, InvalidInput)}
            refs: dict[str, str] | None = {} if with_subjects else None
            states, decisions = self.subject_states(session, subject_ids, checked_at, size, refs)
        self._saw_tree_size(size)
        results = BatchEvaluator(context.policy, moment).evaluate_all(parsed, states, decisions)
        return CheckBatch(
            checked_at=checked_at,
            at=moment,
            policy_version=context.policy_version,
            checkpoint=context.checkpoint,
            results=results,
            refs=refs,
            decisions=decisions if with_subjects else None,
        )

    def subject_states(
        self,
        session: Session,
        subject_ids: Iterable[str],
        as_of: int,
        tree_size: int,
        refs: dict[str, str] | None = None,
    ) -> tuple[dict[str, SubjectState], dict[str, list[Decision]]]:
        """Subject states and decisions as of a tree size: from the cache, else grouped queries.

        `tree_size` is the session's snapshot size, which the caller has already read.
        Ids that are neither registered nor erased are left out. `refs`, if given,
        receives the subject references of the registered ids.
        """
        ids = list(subject_ids)
        states, decisions = self.subjects.lookup(session, ids, as_of, tree_size, refs)
        unmapped = [subject_id for subject_id in ids if subject_id not in states]
        if unmapped:
            secret = self._erasure_secret()
            hashes = {erased_id_hash(secret, subject_id): subject_id for subject_id in unmapped}
            for chunk in in_chunks(list(hashes)):
                for (id_hash,) in session.execute(
                    select(col(ErasedSubject.id_hash)).where(col(ErasedSubject.id_hash).in_(chunk))
                ):
                    # Erasure is a legal override: it answers `erased` at every
                    # tree size, since the data to answer otherwise is gone.
                    states[hashes[id_hash]] = SubjectState(
                        registered=True, erased=True, minor=False, jurisdiction=None
                    )
        return states, decisions

    def _context_at(self, session: Session, size: int) -> _SizeContext:
        context = self._contexts.get(size)
        if context is None:
            version, policy = self._policies.at(session, size)
            checkpoint = log.checkpoint_note_at_or_after(session, size)
            context = _SizeContext(version, policy, checkpoint)
            if len(self._contexts) >= _MAX_CONTEXTS:
                self._contexts.clear()
            self._contexts[size] = context
        return context


def _parse_checks(
    requests: Sequence[CheckItem], policy: Policy, default_purpose: object
) -> list[tuple[str, str, str] | InvalidInput]:
    """Validate every check: (subject_id, category, purpose), or the item's error.

    Each distinct category and purpose is checked against the policy once.
    """
    categories: dict[str, str | InvalidInput] = {}
    purposes: dict[str, str | InvalidInput] = {}
    parsed: list[tuple[str, str, str] | InvalidInput] = []
    for subject_id, category, purpose in requests:
        if (
            type(subject_id) is not str
            or not 0 < len(subject_id) <= MAX_SUBJECT_ID
            or not subject_id.isprintable()
        ):
            try:
                subject_id = validate_subject_id(subject_id, field="subject_id")
            except InvalidInput as exc:
                parsed.append(_kept(exc))
                continue
        if type(category) is not str:
            parsed.append(InvalidInput("must be a string", field="category"))
            continue
        known_category = categories.get(category)
        if known_category is None:
            known_category = categories[category] = _checked(
                policy.check_category, category, "category"
            )
        if isinstance(known_category, InvalidInput):
            parsed.append(known_category)
            continue
        if purpose is None:
            purpose = default_purpose
        if type(purpose) is not str:
            parsed.append(InvalidInput("must be a string", field="purpose"))
            continue
        known_purpose = purposes.get(purpose)
        if known_purpose is None:
            known_purpose = purposes[purpose] = _checked(policy.check_purpose, purpose, "purpose")
        if isinstance(known_purpose, InvalidInput):
            parsed.append(known_purpose)
            continue
        parsed.append((subject_id, known_category, known_purpose))
    return parsed


def _checked(check: Callable[..., str], name: str, field: str) -> str | InvalidInput:
    try:
        return check(name, field=field)
    except InvalidInput as exc:
        return _kept(exc)


def _kept(exc: InvalidInput) -> InvalidInput:
    # An error kept as a result must not keep its traceback: that would hold the
    # parsing frame, and with it the whole batch, in a cycle only the cyclic GC
    # frees — a stream's memory grew by ~40 KB per 2,000-line chunk until it ran.
    return exc.with_traceback(None)


def _now() -> str:
    return format_timestamp(utc_now())
