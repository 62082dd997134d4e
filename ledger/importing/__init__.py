"""Bulk import of subject registrations and consent decisions from CSV or JSONL.

Two streaming passes, in constant memory (`run.import_file`):
1. read and validate every row once (and compute the file's SHA-256, its
   import id), keeping each good row's validated fields in a spool on disk
   (`rows`, `validation`, `spool`); with any bad row nothing is written, unless
   the caller chose to skip them;
2. write the spooled rows in batches, one transaction and one checkpoint per
   batch, recording in the same transaction how many rows are done
   (`batches`). For a large file a second process (`writer_process`) validates
   the second half of the file during pass 1, then commits each batch while
   this one builds the next.
An interrupted import (Ctrl-C, SIGKILL) resumes after its last committed
batch; importing a finished file again adds nothing. Under the write lock a
batch is only written on the head and the progress it was built on, so
nothing another writer appended in between is lost or doubled.
"""

from ledger.importing.batches import DEFAULT_BATCH, ImportContext
from ledger.importing.fields import FIELDS
from ledger.importing.rows import ImportRecord, RowError, parse_record
from ledger.importing.run import ImportSummary, import_file
from ledger.importing.validation import ImportRejected, RowValidator, spool_fields
from ledger.importing.writer_process import ImportWriteFailed

__all__ = [
    "DEFAULT_BATCH",
    "FIELDS",
    "ImportContext",
    "ImportRecord",
    "ImportRejected",
    "ImportSummary",
    "ImportWriteFailed",
    "RowError",
    "RowValidator",
    "import_file",
    "parse_record",
    "spool_fields",
]
