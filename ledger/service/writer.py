"""The ledger's writes: each one transaction under the write lock, ending in a signed checkpoint.

Validate, append entries, update projections and mappings, sign the new
checkpoint, commit. Concurrent writes share a transaction (`groupcommit`);
rotations and the genesis, signed by two keys or by a key not yet current,
run alone. Bulk imports go to `ledger.importing`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, delete, func, insert, select
from sqlalchemy.orm import Session
from sqlmodel import col

from ledger.consent import entries
from ledger.consent.decisions import DecisionRequest, validate_decision
from ledger.consent.policy import Policy, default_policy
from ledger.consent.projection import Projector
from ledger.consent.subjects import (
    commitment,
    erased_id_hash,
    new_salt,
    new_subject_ref,
    validate_jurisdiction,
    validate_subject_id,
)
from ledger.datasets import obligations
from ledger.errors import Conflict, InvalidInput
from ledger.importing import (
    DEFAULT_BATCH,
    ImportContext,
    ImportSummary,
    RowError,
    import_file,
)
from ledger.service.groupcommit import GroupCommitter, GroupRequest
from ledger.service.head import HeadTracker
from ledger.service.keys import SigningKey
from ledger.service.policies import PolicyCache
from ledger.service.reads import (
    ReadModel,
    is_erased,
    latest_subject_row,
    refuse_unknown_subject,
)
from ledger.service.signer import Signer
from ledger.store.db import read_session, translated_errors, write_session
from ledger.store.schema import (
    ErasedSubject,
    IdempotencyRecord,
    LedgerState,
    PolicyVersion,
    SubjectMapping,
)
from ledger.tlog import log
from ledger.tlog.log import LogEntry, LogWriter, SealedAppend


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A client's `Idempotency-Key` and a hash of the request it came with."""

    client: str
    key: str
    request_hash: bytes


class Writer:
    """Appends to the log: subjects, decisions, erasures, policies, keys and imports."""

    def __init__(
        self,
        engine: Engine,
        signer: Signer,
        head: HeadTracker,
        policies: PolicyCache,
        reads: ReadModel,
    ) -> None:
        self._engine = engine
        self._signer = signer
        self._head = head
        self._policies = policies
        self._reads = reads
        self._group = GroupCommitter(self._run_group)

    # --- the genesis and keys ------------------------------------------------------------

    def create_log(self, origin: str, *, actor: str) -> SealedAppend:
        """The log's first entries, signed by a new key; refuses an existing ledger or key."""
        with read_session(self._engine) as session:
            if session.get(LedgerState, 1) is not None:
                raise Conflict("this database already holds a ledger; refusing to overwrite it")
        # The key is staged first and promoted only once the log that names it
        # has committed: a crash in between leaves nothing half-made.
        key = self._signer.stage_first(origin)
        policy = default_policy()

        def genesis(writer: LogWriter) -> None:
            writer.append(*entries.ledger_initialized(origin, str(key.verifier_key)))
            writer.append(*entries.policy_published(policy))

        with write_session(self._engine) as session:
            sealed = log.create_log(
                session,
                origin=origin,
                actor=actor,
                genesis=genesis,
                signers=[key],
                project=Projector().project,
                subject_of=entries.subject_of,
            )
        self._signer.promote(key)
        return sealed

    def rotate_key(self, *, actor: str) -> SealedAppend:
        """Announce a new key; the checkpoint covering it is signed by old and new."""
        new = self._signer.stage_next()

        def build(writer: LogWriter, session: Session) -> None:
            writer.append(*entries.key_added(str(new.verifier_key)))
            writer.append(*entries.key_retired(writer.verifier_key))
            log.set_verifier_key(session, str(new.verifier_key))

        sealed = self._write(actor, build, extra_signers=[new])
        assert sealed is not None
        self._signer.promote(new)
        return sealed

    # --- the write path ------------------------------------------------------------------

    def write(self, actor: str, build: Callable[[LogWriter, Session], None]) -> SealedAppend | None:
        """Run `build` in a write transaction (shared with concurrent writers) and seal
        it; None if it appended nothing. For writes other parts of the service make."""
        return self._write(actor, build)

    def _write(
        self,
        actor: str,
        build: Callable[[LogWriter, Session], None],
        *,
        extra_signers: Sequence[SigningKey] = (),
    ) -> SealedAppend | None:
        """Run `build` in a write transaction (shared with concurrent writers) and seal it."""
        if not extra_signers:
            # Errors inside a group are raised here, outside its transaction.
            with translated_errors():
                sealed = self._group.submit(actor, build)
            if sealed is not None:
                self._head.saw_tree_size(sealed.tree_size)
            return sealed
        signer = self._signer.signing_key()
        with write_session(self._engine) as session:
            writer = LogWriter.open(session, actor=actor, subject_of=entries.subject_of)
            if str(signer.verifier_key) != writer.verifier_key:
                # Another process rotated the key since we loaded ours.
                signer = self._signer.reload(writer.verifier_key)
            build(writer, session)
            if not writer.pending:
                return None
            projector = Projector(lambda ref: latest_subject_row(session, ref))
            sealed = writer.seal([signer, *extra_signers], projector.project)
            obligations.catch_up(session, writer.time)
        self._head.saw_tree_size(sealed.tree_size)
        return sealed

    def _run_group(self, group: Sequence[GroupRequest]) -> None:
        """One transaction for a group of writes; each in a savepoint of its own."""
        signer = self._signer.signing_key()
        with write_session(self._engine) as session:
            writer = LogWriter.open(session, actor=group[0].actor, subject_of=entries.subject_of)
            if str(signer.verifier_key) != writer.verifier_key:
                signer = self._signer.reload(writer.verifier_key)
            for request in group:
                mark = writer.mark()
                writer.actor = request.actor
                savepoint = session.begin_nested()
                try:
                    request.build(writer, session)
                    projector = Projector(lambda ref: latest_subject_row(session, ref))
                    writer.project(projector.project)
                    savepoint.commit()
                except Exception as exc:
                    savepoint.rollback()
                    writer.rollback_to(mark)
                    request.error = exc
                    continue
                request.first, request.last = mark.pending, len(writer.pending)
            if not writer.pending:
                return
            sealed = writer.seal([signer])
            # What the group's entries mean for dataset members, in the same transaction.
            obligations.catch_up(session, writer.time)
        for request in group:
            if request.error is None and request.last > request.first:
                request.result = SealedAppend(
                    entries=sealed.entries[request.first : request.last],
                    tree_size=sealed.tree_size,
                    checkpoint=sealed.checkpoint,
                )

    # --- the writes ----------------------------------------------------------------------

    def register_subject(
        self,
        subject_id: str,
        *,
        jurisdiction: str | None = None,
        minor: bool = False,
        actor: str,
    ) -> SealedAppend | None:
        """Register a subject, or update its jurisdiction and minor flag.

        Returns None when the subject already has exactly these attributes.
        """
        subject_id = validate_subject_id(subject_id)
        jurisdiction = validate_jurisdiction(jurisdiction)
        if not isinstance(minor, bool):
            raise InvalidInput("must be true or false", field="minor")
        erasure_secret = self._signer.erasure_secret()

        def build(writer: LogWriter, session: Session) -> None:
            register_or_update(
                writer, session, subject_id, jurisdiction, minor, erasure_secret=erasure_secret
            )

        return self._write(actor, build)

    def record_consents(
        self,
        subject_id: str,
        decisions: Sequence[DecisionRequest],
        *,
        actor: str,
        idempotency: IdempotencyKey | None = None,
    ) -> SealedAppend:
        """Record one or more decisions for a registered subject, all or none.

        With an idempotency key, a retry with the same key and request returns
        the first write's result and appends nothing; the same key with a
        different request is refused.
        """
        subject_id = validate_subject_id(subject_id)
        if not decisions:
            raise InvalidInput("at least one decision is required", field="decisions")
        erasure_secret = self._signer.erasure_secret()
        replayed: list[SealedAppend] = []

        def build(writer: LogWriter, session: Session) -> None:
            if idempotency is not None:
                earlier = _earlier_write(session, idempotency)
                if earlier is not None:
                    replayed.append(earlier)
                    return
            mapping = session.get(SubjectMapping, subject_id)
            if mapping is None:
                refuse_unknown_subject(session, subject_id, erasure_secret)
            policy = self._policies.current(session)
            first = writer.next_seq
            for position, request in enumerate(decisions):
                terms = validate_decision(
                    request, policy, now=writer.time, field=f"decisions[{position}]"
                )
                writer.append(*entries.consent_recorded(mapping.ref, terms))
            if idempotency is not None:
                session.add(
                    IdempotencyRecord(
                        client=idempotency.client,
                        key=idempotency.key,
                        request_hash=idempotency.request_hash,
                        first_seq=first,
                        count=len(decisions),
                        tree_size=writer.next_seq,
                        created=writer.time,
                    )
                )

        sealed = self._write(actor, build)
        if sealed is None:
            return replayed[0]
        return sealed

    def erase_subject(self, subject_id: str, *, actor: str) -> SealedAppend:
        """GDPR Art. 17: unlink the subject from the log for good."""
        subject_id = validate_subject_id(subject_id)
        erasure_secret = self._signer.erasure_secret()

        def build(writer: LogWriter, session: Session) -> None:
            mapping = session.get(SubjectMapping, subject_id)
            if mapping is None:
                refuse_unknown_subject(session, subject_id, erasure_secret)
            entry = writer.append(*entries.subject_erased(mapping.ref))
            session.execute(
                delete(SubjectMapping).where(col(SubjectMapping.subject_id) == subject_id)
            )
            session.execute(
                insert(ErasedSubject).values(
                    id_hash=erased_id_hash(erasure_secret, subject_id), seq=entry.seq
                )
            )

        sealed = self._write(actor, build)
        assert sealed is not None
        return sealed

    def publish_policy(self, policy: Policy, *, actor: str) -> SealedAppend:
        """Publish a policy; its version must be newer than the one in force."""

        def build(writer: LogWriter, session: Session) -> None:
            current = session.scalar(select(func.max(col(PolicyVersion.version))))
            if current is not None and policy.version <= current:
                raise Conflict(
                    f"policy version {policy.version} is not newer than the version in force "
                    f"({current})"
                )
            writer.append(*entries.policy_published(policy))

        sealed = self._write(actor, build)
        assert sealed is not None
        return sealed

    def import_file(
        self,
        path: Path,
        *,
        actor: str,
        batch_size: int = DEFAULT_BATCH,
        skip_invalid: bool = False,
        on_reject: Callable[[RowError], None] | None = None,
        progress: Callable[[int], None] | None = None,
        pipeline: bool | None = None,
    ) -> ImportSummary:
        """Import a CSV/JSONL file of registrations and decisions (see `ledger.importing`)."""
        context = ImportContext(
            engine=self._engine,
            policy=self._reads.current_policy(),
            signer_for=self._signer.for_log,
            erasure_secret=self._signer.erasure_secret(),
            actor=actor,
        )
        return import_file(
            context,
            path,
            batch_size=batch_size,
            skip_invalid=skip_invalid,
            on_reject=on_reject,
            progress=progress,
            pipeline=pipeline,
        )


def _earlier_write(session: Session, idempotency: IdempotencyKey) -> SealedAppend | None:
    record = session.get(IdempotencyRecord, (idempotency.client, idempotency.key))
    if record is None:
        return None
    if record.request_hash != idempotency.request_hash:
        raise InvalidInput(
            "this Idempotency-Key was already used with a different request",
            field="Idempotency-Key",
        )
    found = log.read_entries(session, record.first_seq, record.count)
    return SealedAppend(
        entries=tuple(found),
        tree_size=record.tree_size,
        checkpoint=log.checkpoint_at(session, record.tree_size).note,
    )


def register_or_update(
    writer: LogWriter,
    session: Session,
    subject_id: str,
    jurisdiction: str | None,
    minor: bool,
    *,
    erasure_secret: bytes,
) -> LogEntry | None:
    """Append `subject.registered` or `subject.updated` (changed fields only), or nothing."""
    mapping = session.get(SubjectMapping, subject_id)
    if mapping is None:
        if is_erased(session, subject_id, erasure_secret):
            raise Conflict(f"subject {subject_id!r} was erased and cannot be registered again")
        ref, salt = new_subject_ref(), new_salt()
        session.add(SubjectMapping(subject_id=subject_id, ref=ref, salt=salt))
        registered = entries.subject_registered(
            ref, commitment(salt, subject_id), jurisdiction, minor
        )
        return writer.append(*registered)
    latest = latest_subject_row(session, mapping.ref)
    assert latest is not None
    changes = entries.subject_changes(latest, jurisdiction, minor)
    if not changes:
        return None
    return writer.append(*entries.subject_updated(mapping.ref, changes))
