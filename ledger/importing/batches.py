"""Pass 2's unit of work: a batch of spooled rows, built into its entries, projections and
checkpoint on a given head (with the constructors of `ledger.consent.entries`, as every
write is), then stored with the import's progress in one transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Engine, insert, select, text, update
from sqlalchemy.orm import Session
from sqlmodel import col

from ledger.consent import entries
from ledger.consent.decisions import ConsentTerms, check_expires
from ledger.consent.policy import Policy
from ledger.consent.projection import Projector, SubjectRow, subject_version
from ledger.consent.subjects import RandomPool, commitment
from ledger.datasets import obligations
from ledger.store.db import SQLITE_CACHE_KIB, bulk_insert, in_chunks, write_session
from ledger.store.schema import ImportProgress, LedgerState, SubjectMapping, SubjectVersion
from ledger.timestamps import format_timestamp, utc_now
from ledger.tlog.log import LogHead, LogWriter, PreparedAppend, write_prepared
from ledger.tlog.notes import NoteSigner

DEFAULT_BATCH = 5_000


@dataclass
class ImportContext:
    """What an import needs from the ledger: its database, policy, keys and actor."""

    engine: Engine
    policy: Policy
    # The signer for the key the log expects now (it may have been rotated).
    signer_for: Callable[[str], NoteSigner]
    erasure_secret: bytes
    actor: str


@dataclass(slots=True)
class Batch:
    """Spooled rows to write in one transaction, under one checkpoint."""

    rows: list[list[Any]]
    # The rows done before it and after it (spool positions; bad rows count as done).
    start: int
    end: int
    finished: bool


def split_into_batches(
    spool: Iterable[list[Any]], skip: int, bad_lines: set[int], batch_size: int, total: int
) -> Iterator[Batch]:
    """The spooled rows after position `skip` (done by an earlier attempt) less those on
    `bad_lines`, `batch_size` at a time; the last batch, maybe empty, finishes the import."""
    rows: list[list[Any]] = []
    start = skip
    for row in spool:
        position = row[0]
        if position <= skip or row[1] in bad_lines:
            continue
        rows.append(row)
        if len(rows) >= batch_size:
            yield Batch(rows, start, position, finished=False)
            rows, start = [], position
    yield Batch(rows, start, total, finished=True)


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A batch ready to be written: plain values, picklable for the writer process."""

    import_id: str
    start: int
    end: int
    finished: bool
    base: LogHead
    mappings: list[tuple[str, str, bytes]]
    append: PreparedAppend | None
    rows: int
    entries: int
    # This import's entries once the batch has landed (recorded in its progress row).
    entries_written: int

    @property
    def appended(self) -> bool:
        return self.append is not None


SubjectsKnown = tuple[dict[str, str], dict[str, SubjectRow]]
V = TypeVar("V")


def prepare_batch(
    context: ImportContext,
    import_id: str,
    batch: Batch,
    head: LogHead,
    known: SubjectsKnown,
    entries_before: int,
    *,
    session: Session | None,
) -> tuple[PreparedBatch, LogHead]:
    """Build a batch's entries, projections and checkpoint on `head`, without the database.

    `known` is what the database says (or will say, once the batches before this one
    land) of the batch's subjects; it is brought up to date as rows are appended.
    `session`: the write transaction the batch will be written in; without one, the
    batch goes to the writer process with the tree's new nodes, from which it stores
    the Merkle tiles and nodes (see `ledger.tlog.log.write_prepared`).
    """
    mappings, latest = known
    writer = LogWriter.at(
        head,
        actor=context.actor,
        session=session,
        keep_nodes=session is not None,
        subject_of=entries.subject_of,
    )
    # A copy: `latest` moves on as rows are appended, the projector starts from the
    # versions before the batch.
    projector = Projector(dict(latest).get)
    new_mappings: list[tuple[str, str, bytes]] = []
    randomness = RandomPool()  # one per batch: never shared between threads
    for row in batch.rows:
        _append_row(writer, row, mappings, latest, new_mappings, randomness)
    append = None
    if writer.pending:
        append = writer.prepare([context.signer_for(writer.verifier_key)], projector.project)
    appended = writer.next_seq - head.size
    prepared = PreparedBatch(
        import_id=import_id,
        start=batch.start,
        end=batch.end,
        finished=batch.finished,
        base=head,
        mappings=new_mappings,
        append=append,
        rows=len(batch.rows),
        entries=appended,
        entries_written=entries_before + appended,
    )
    return prepared, writer.head()


def store_batch(session: Session, prepared: PreparedBatch) -> int:
    """Write a prepared batch and its progress in the caller's write transaction;
    the tree size after it."""
    bulk_insert(session, "subjects", ("subject_id", "ref", "salt"), prepared.mappings)
    if prepared.append is not None:
        write_prepared(session, prepared.append)
        # What the batch's decisions mean for dataset members, in the same transaction.
        obligations.catch_up(session, format_timestamp(utc_now()))
    values = {
        "rows_done": prepared.end,
        "entries_written": prepared.entries_written,
        "finished": prepared.finished,
    }
    if session.get(ImportProgress, prepared.import_id) is None:
        session.execute(insert(ImportProgress).values(import_id=prepared.import_id, **values))
    else:
        session.execute(
            update(ImportProgress)
            .where(col(ImportProgress.import_id) == prepared.import_id)
            .values(**values)
        )
    return prepared.append.tree_size if prepared.append is not None else prepared.base.size


@contextmanager
def batch_session(engine: Engine) -> Iterator[Session]:
    """The write transaction a batch is stored in (`write_session`, its cache sized for a batch)."""
    with write_session(engine) as session:
        if session.get_bind().dialect.name == "sqlite":
            # A batch dirties thousands of pages; with SQLite's default 2 MB cache they spill
            # to the WAL mid-transaction and are written again. Only on the import's connection.
            session.execute(text(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}"))
        yield session


def commit_prepared(engine: Engine, prepared: PreparedBatch) -> int | None:
    """Write a batch if the log's head and the import's progress are what it was built
    on (the tree size after it), else nothing (None)."""
    with batch_session(engine) as session:
        state = session.get(LedgerState, 1)
        done = session.get(ImportProgress, prepared.import_id)
        if (
            state is None
            or (state.tree_size, state.verifier_key)
            != (prepared.base.size, prepared.base.verifier_key)
            or (done.rows_done if done is not None else 0) != prepared.start
            or (done is not None and done.finished)
        ):
            return None
        return store_batch(session, prepared)


def load_batch_subjects(
    session: Session, batch: list[list[Any]], overlay: SubjectsKnown = ({}, {})
) -> SubjectsKnown:
    """The batch's subjects: their refs and latest versions, from `overlay` (a batch in
    flight) where it knows them, else from the database."""
    overlay_mappings, overlay_latest = overlay
    mappings, ids = _known_and_unknown({row[2] for row in batch}, overlay_mappings)
    for chunk in in_chunks(ids):
        for subject_id, ref in session.execute(
            select(col(SubjectMapping.subject_id), col(SubjectMapping.ref)).where(
                col(SubjectMapping.subject_id).in_(chunk)
            )
        ):
            mappings[subject_id] = ref
    latest, refs = _known_and_unknown(mappings.values(), overlay_latest)
    for chunk in in_chunks(refs):
        for row in session.execute(
            select(SubjectVersion.__table__).where(  # type: ignore[attr-defined]
                col(SubjectVersion.ref).in_(chunk)
            )
        ).mappings():
            current = latest.get(row["ref"])
            if current is None or row["seq"] > current["seq"]:
                latest[row["ref"]] = dict(row)
    return mappings, latest


def _known_and_unknown(keys: Iterable[str], known: dict[str, V]) -> tuple[dict[str, V], list[str]]:
    """The keys `known` has values for (with them), and the others."""
    found: dict[str, V] = {}
    unknown = []
    for key in keys:
        value = known.get(key)
        if value is None:
            unknown.append(key)
        else:
            found[key] = value
    return found, unknown


def _append_row(
    writer: LogWriter,
    row: list[Any],
    mappings: dict[str, str],
    latest: dict[str, SubjectRow],
    new_mappings: list[tuple[str, str, bytes]],
    randomness: RandomPool,
) -> None:
    """Append a spooled row's entries. Every value in it was validated in pass 1, so the
    entries are vetted (`canonical_bytes` needs no safety walk)."""
    line, subject_id, jurisdiction, jurisdiction_given, minor = row[1:6]
    ref = mappings.get(subject_id)
    if ref is None:
        ref, salt = randomness.ref_and_salt()
        mappings[subject_id] = ref
        new_mappings.append((subject_id, ref, salt))
        registered = entries.subject_registered(
            ref, commitment(salt, subject_id), jurisdiction, bool(minor)
        )
        latest[ref] = subject_version(writer.append(*registered, vetted=True), None)
    elif len(row) == 6:
        current = latest[ref]
        changes = entries.subject_changes(
            current, jurisdiction, minor, jurisdiction_given=jurisdiction_given
        )
        if changes:
            updated = writer.append(*entries.subject_updated(ref, changes), vetted=True)
            latest[ref] = subject_version(updated, current)
    if len(row) > 6:
        category, purpose, decision, explicit, method, notice, effective, expires = row[6:]
        if effective is None:
            # Stated without one: the append's time, as for any decision.
            effective = writer.time
            check_expires(effective, expires, field=f"line {line}, expires")
        terms = ConsentTerms(
            category, purpose, decision, explicit, method, notice, effective, expires
        )
        writer.append(*entries.consent_recorded(ref, terms), vetted=True)
