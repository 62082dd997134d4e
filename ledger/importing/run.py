"""`import_file`: an import's two passes, resuming after the last committed batch, with
or without the writer process, and the summary it returns."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ledger.consent.projection import SubjectRow
from ledger.errors import InvalidInput
from ledger.gcpause import no_gc
from ledger.importing.batches import (
    DEFAULT_BATCH,
    Batch,
    ImportContext,
    PreparedBatch,
    SubjectsKnown,
    batch_session,
    load_batch_subjects,
    prepare_batch,
    split_into_batches,
    store_batch,
)
from ledger.importing.rows import HashingReader, RowError, read_rows, split_file
from ledger.importing.spool import Spool, renumbered
from ledger.importing.validation import ImportRejected, Validation, erased_rows
from ledger.importing.writer_process import ImportWriteFailed, WriterProcess
from ledger.store.db import read_session
from ledger.store.schema import ImportProgress
from ledger.tlog.log import LogHead, read_head, tree_size

# Files from this size on are imported with a writer process (`WriterProcess`).
PIPELINE_BYTES = 1 << 20


Progress = Callable[[int], None]


@dataclass
class ImportSummary:
    """What an import read and wrote (`to_json` is what `import --json` prints)."""

    import_id: str
    rows: int = 0
    invalid: int = 0
    imported_rows: int = 0
    entries: int = 0
    batches: int = 0
    skipped_already_done: int = 0
    already_imported: bool = False
    tree_size: int = 0
    errors: list[RowError] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "import_id": self.import_id,
            "rows": self.rows,
            "invalid": self.invalid,
            "imported_rows": self.imported_rows,
            "entries": self.entries,
            "batches": self.batches,
            "resumed_after_rows": self.skipped_already_done,
            "already_imported": self.already_imported,
            "tree_size": self.tree_size,
        }


def import_file(
    context: ImportContext,
    path: Path,
    *,
    batch_size: int = DEFAULT_BATCH,
    skip_invalid: bool = False,
    on_reject: Callable[[RowError], None] | None = None,
    progress: Progress | None = None,
    pipeline: bool | None = None,
) -> ImportSummary:
    """Import `path` (see `ledger.importing`). `pipeline`: with a writer process,
    which validates part of the file and commits each batch while this one prepares
    the next (None: for files of `PIPELINE_BYTES` or more, unless the database is in
    memory)."""
    if batch_size < 1:
        raise InvalidInput("must be at least 1", field="batch_size")
    if pipeline is None:
        pipeline = path.stat().st_size >= PIPELINE_BYTES and WriterProcess.can_write(context.engine)
    # Every row makes a few short-lived dicts and tuples: the collections they would
    # trigger rescan everything else alive, for nothing (a sixth of an import's time).
    with (
        no_gc(),
        Spool() as spool,
        WriterProcess(context.engine) if pipeline else nullcontext() as helper,
    ):
        # 1. Validate everything, hashing the file as it streams by. With a writer
        # process, that process validates the second half of the file meanwhile.
        part = split_file(path) if helper is not None else None
        second = None
        if helper is not None and part is not None:
            second = helper.validate(context, path, part)
        validation = Validation(
            context.policy, spool, partial(erased_rows, context.engine, context.erasure_secret)
        )
        with path.open("rb") as handle:
            reader = HashingReader(handle, limit=None if part is None else part.offset)
            total = validation.add_rows(read_rows(path, reader), batch_size)
            if part is not None:
                reader.hash_rest()
            import_id = reader.digest.hexdigest()
        errors = validation.finish()
        rows_first = total
        if helper is not None and part is not None:
            more_errors, more_rows = helper.validated()
            errors += more_errors
            total += more_rows
        errors.sort(key=lambda error: error.line)
        summary = ImportSummary(import_id=import_id, rows=total, invalid=len(errors))
        if errors and not skip_invalid:
            raise ImportRejected(errors, total)
        if on_reject is not None:
            for error in errors:
                on_reject(error)
        summary.errors = errors
        bad_lines = {error.line for error in errors}

        # 2. Write, resuming after the last committed batch of an earlier attempt.
        with read_session(context.engine) as session:
            done = session.get(ImportProgress, import_id)
        if done is not None and done.finished:
            summary.already_imported = True
            with read_session(context.engine) as session:
                summary.tree_size = tree_size(session)
            return summary
        skip = done.rows_done if done is not None else 0
        summary.skipped_already_done = skip
        spooled: Iterable[list[Any]] = spool
        if second is not None:
            spooled = itertools.chain(spool, renumbered(second, rows_first))
        batches = split_into_batches(spooled, skip, bad_lines, batch_size, total)
        if helper is not None:
            _write_pipelined(context, import_id, batches, summary, progress, helper)
        else:
            for batch in batches:
                _write_batch(context, import_id, batch, summary)
                if progress:
                    progress(batch.end)
    return summary


def _landed(summary: ImportSummary, landed: PreparedBatch | _Sent, size: int) -> None:
    summary.entries += landed.entries
    summary.batches += 1 if landed.appended else 0
    summary.imported_rows += landed.rows
    summary.tree_size = size


def _write_batch(
    context: ImportContext, import_id: str, batch: Batch, summary: ImportSummary
) -> None:
    """Write one batch in this process, building it under the write lock."""
    with batch_session(context.engine) as session:
        done = session.get(ImportProgress, import_id)
        done_rows = done.rows_done if done is not None else 0
        if done is not None and (done.finished or done_rows >= batch.end > batch.start):
            # Another writer of this file got here first (the pipeline's writer process,
            # finishing the batch it had when its import was stopped).
            summary.tree_size = tree_size(session)
            return
        # Under the lock, rows already written are never written again.
        rows = [row for row in batch.rows if row[0] > done_rows]
        batch = Batch(rows, max(batch.start, done_rows), batch.end, batch.finished)
        prepared, _ = prepare_batch(
            context,
            import_id,
            batch,
            read_head(session),
            load_batch_subjects(session, rows),
            summary.entries,
            session=session,
        )
        size = store_batch(session, prepared)
    _landed(summary, prepared, size)


# Batches left unanswered while the next one is prepared: one being written and one
# queued behind it, so that neither process waits for the other on every batch.
IN_FLIGHT = 2


@dataclass(frozen=True, slots=True)
class _Sent:
    """A batch sent to the writer: what rebuilding it and counting it take."""

    batch: Batch
    entries: int
    rows: int
    appended: bool
    # What the batch says of its subjects once written (for the batches after it).
    known: SubjectsKnown


def _write_pipelined(
    context: ImportContext,
    import_id: str,
    batches: Iterator[Batch],
    summary: ImportSummary,
    progress: Progress | None,
    writer: WriterProcess,
) -> None:
    """Prepare each batch while a writer process commits the ones before.

    Each batch is built on the head the batches in flight will leave, and on what
    they and the database say of its subjects. The writer commits it only if, under
    the write lock, the log's head and this import's progress are exactly what it was
    built on; when anything else wrote in between, the batches in flight are built
    again here, under the lock.
    """
    in_flight: deque[_Sent] = deque()
    head: LogHead | None = None
    for batch in batches:
        with read_session(context.engine) as session:
            if head is None:
                head = read_head(session)
            known = load_batch_subjects(session, batch.rows, _overlay(in_flight))
        entries_before = summary.entries + sum(sent.entries for sent in in_flight)
        prepared, head = prepare_batch(
            context, import_id, batch, head, known, entries_before, session=None
        )
        writer.send(prepared)
        in_flight.append(_Sent(batch, prepared.entries, prepared.rows, prepared.appended, known))
        if len(in_flight) > IN_FLIGHT and not _finish(
            context, import_id, writer, in_flight, summary, progress
        ):
            head = None
    while in_flight:
        _finish(context, import_id, writer, in_flight, summary, progress)


def _overlay(in_flight: deque[_Sent]) -> SubjectsKnown:
    """What the batches in flight say of their subjects, the latest last."""
    if len(in_flight) == 1:
        return in_flight[0].known
    mappings: dict[str, str] = {}
    latest: dict[str, SubjectRow] = {}
    for sent in in_flight:
        mappings.update(sent.known[0])
        latest.update(sent.known[1])
    return mappings, latest


def _finish(
    context: ImportContext,
    import_id: str,
    writer: WriterProcess,
    in_flight: deque[_Sent],
    summary: ImportSummary,
    progress: Progress | None,
) -> bool:
    """Wait for the oldest batch in flight. If it was not written (the head had moved),
    neither were those sent after it, built on it (the writer checks this import's
    progress): build them all again, here, under the lock; False then."""
    oldest = in_flight.popleft()
    size = writer.result()
    if size is not None:
        _landed(summary, oldest, size)
        if progress:
            progress(oldest.batch.end)
        return True
    for _ in in_flight:
        if writer.result() is not None:
            raise ImportWriteFailed("the writer process wrote a batch out of order")
    for sent in (oldest, *in_flight):
        _write_batch(context, import_id, sent.batch, summary)
        if progress:
            progress(sent.batch.end)
    in_flight.clear()
    return False
