"""Bulk import (SPEC §5 `import`), at the ledger level, on SQLite and on PostgreSQL.

`ConsentLedger.import_file` validates every row before anything is written and
names every bad row; writes in batches, one transaction and one checkpoint
each; adds nothing when the same file comes again; and resumes after its last
committed batch when it was killed half-way (a real process, SIGKILLed).

What landed is checked against the file itself: the `consent.recorded`
decisions, in file order, field by field; one `subject.registered` per subject;
and the subjects' attributes as a replay of the file's rows says they must be.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
import rfc8785
from sqlalchemy import Engine, func, select
from sqlmodel import col

from ledger.consent import entries
from ledger.consent.projection import Projector
from ledger.demo import generate_rows, write_csv, write_jsonl
from ledger.errors import InvalidInput, VerificationError
from ledger.importing.fields import FIELDS
from ledger.importing.rows import RowError
from ledger.importing.validation import ImportRejected
from ledger.importing.writer_process import ImportWriteFailed
from ledger.service import ConsentLedger
from ledger.settings import Settings
from ledger.store.db import read_session, write_session
from ledger.store.schema import (
    CheckpointRow,
    ConsentDecision,
    ImportProgress,
    LogEntryRow,
    SubjectMapping,
    SubjectVersion,
)
from ledger.timestamps import normalize_timestamp
from ledger.tlog import merkle
from ledger.tlog.log import LogWriter, read_head, write_prepared
from ledger.verify import verify_ledger

ACTOR = "test"
ROOT = Path(__file__).resolve().parent.parent
BULK_IMPORT = ROOT / "tests" / "procs" / "bulk_import.py"
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
WAIT = 60.0  # seconds: the bound on every wait for a child process

Row = dict[str, str]


# --- reading the database back --------------------------------------------------------------


def kinds(engine: Engine) -> Counter[str]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(col(LogEntryRow.kind), func.count()).group_by(col(LogEntryRow.kind))
        ).all()
    return Counter(dict(rows))


def count(engine: Engine, model: Any) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(model)).scalar_one())


def import_rows(engine: Engine) -> list[tuple[str, int, int, bool]]:
    with engine.connect() as connection:
        return [
            (row.import_id, row.rows_done, row.entries_written, bool(row.finished))
            for row in connection.execute(select(ImportProgress.__table__))  # type: ignore[attr-defined]
        ]


@dataclass(frozen=True)
class Snapshot:
    """Everything an import may change, to prove that one changed nothing."""

    tree_size: int
    checkpoints: int
    subjects: int
    imports: int
    kinds: Counter[str]


def snapshot(ledger: ConsentLedger) -> Snapshot:
    engine = ledger.engine
    return Snapshot(
        ledger.tree_size(),
        count(engine, CheckpointRow),
        count(engine, SubjectMapping),
        count(engine, ImportProgress),
        kinds(engine),
    )


def stored_subjects(engine: Engine) -> dict[str, tuple[str | None, bool]]:
    """subject_id -> (jurisdiction, minor) from the latest subject version of each mapping."""
    with engine.connect() as connection:
        refs: dict[str, str] = dict(
            connection.execute(
                select(col(SubjectMapping.ref), col(SubjectMapping.subject_id))
            ).all()
        )
        latest: dict[str, tuple[int, str | None, bool]] = {}
        for ref, seq, jurisdiction, minor in connection.execute(
            select(
                col(SubjectVersion.ref),
                col(SubjectVersion.seq),
                col(SubjectVersion.jurisdiction),
                col(SubjectVersion.minor),
            )
        ):
            if ref not in latest or seq > latest[ref][0]:
                latest[ref] = (seq, jurisdiction, bool(minor))
    # An erased subject's versions stay in the log's projection, its mapping does not.
    return {
        refs[ref]: (jurisdiction, minor)
        for ref, (_, jurisdiction, minor) in latest.items()
        if ref in refs
    }


def stored_decisions(engine: Engine) -> list[dict[str, Any]]:
    """Every recorded decision in log order, with the raw subject id put back."""
    with engine.connect() as connection:
        refs: dict[str, str] = dict(
            connection.execute(
                select(col(SubjectMapping.ref), col(SubjectMapping.subject_id))
            ).all()
        )
        rows = connection.execute(
            select(ConsentDecision.__table__).order_by(col(ConsentDecision.seq))  # type: ignore[attr-defined]
        ).mappings()
        return [{**row, "subject_id": refs.get(row["ref"])} for row in rows]


# --- what the file says must be in the ledger --------------------------------------------------


@dataclass
class Expected:
    """A replay of import rows by SPEC §5's rules, independent of ledger/importing/."""

    subjects: dict[str, tuple[str | None, bool]] = field(default_factory=dict)
    registered: int = 0
    updated: int = 0
    decisions: list[Row] = field(default_factory=list)


def _flag(value: str) -> bool | None:
    value = value.strip().lower()
    return None if not value else value in ("true", "yes", "y", "1", "t")


def replay(rows: Iterable[Row]) -> Expected:
    expected = Expected()
    for row in rows:
        subject_id = row["subject_id"]
        jurisdiction = row.get("jurisdiction", "").strip().upper() or None
        minor = _flag(row.get("minor", ""))
        if subject_id not in expected.subjects:
            expected.subjects[subject_id] = (jurisdiction, bool(minor))
            expected.registered += 1
        elif not row.get("decision"):
            old_jurisdiction, old_minor = expected.subjects[subject_id]
            new = (
                jurisdiction if jurisdiction is not None else old_jurisdiction,
                minor if minor is not None else old_minor,
            )
            if new != (old_jurisdiction, old_minor):
                expected.subjects[subject_id] = new
                expected.updated += 1
        if row.get("decision"):
            expected.decisions.append(row)
    return expected


def assert_decisions_match(engine: Engine, rows: list[Row]) -> None:
    """The recorded decisions are the file's decision rows, in order, field by field."""
    stored = stored_decisions(engine)
    assert len(stored) == len(rows), f"{len(stored)} decisions stored, {len(rows)} in the file"
    wrong = []
    for position, (got, row) in enumerate(zip(stored, rows, strict=True)):
        want = {
            "subject_id": row["subject_id"],
            "category": row["category"],
            "purpose": row.get("purpose") or "ai-training",
            "decision": row["decision"],
            "explicit": _flag(row.get("explicit", "")) or False,
            "method": row.get("method") or "import",
            "notice": row.get("notice") or None,
            "expires": normalize_timestamp(row["expires"]) if row.get("expires") else None,
        }
        have = {name: got[name] for name in want}
        have["explicit"] = bool(have["explicit"])
        if have != want:
            wrong.append(f"decision {position}: stored {have}, file says {want}")
        if row.get("effective"):
            if got["effective"] != normalize_timestamp(row["effective"]):
                wrong.append(f"decision {position}: effective {got['effective']} != {row}")
        elif not TIMESTAMP.match(got["effective"]):
            wrong.append(f"decision {position}: default effective {got['effective']!r}")
    assert not wrong, "\n".join(wrong[:20])


def assert_import_landed(ledger: ConsentLedger, rows: list[Row], before: Snapshot) -> None:
    """Every row's effect is in the log exactly once, and the log verifies."""
    expected = replay(rows)
    engine = ledger.engine
    added = kinds(engine) - before.kinds
    assert added == Counter(
        {
            "subject.registered": expected.registered,
            "subject.updated": expected.updated,
            "consent.recorded": len(expected.decisions),
        }
    ), added
    assert count(engine, SubjectMapping) - before.subjects == len(expected.subjects)
    assert stored_subjects(engine) == expected.subjects
    assert_decisions_match(engine, expected.decisions)
    report = verify_ledger(engine)
    assert report.entries == ledger.tree_size()
    assert report.subjects == count(engine, SubjectMapping)


# --- files ---------------------------------------------------------------------------------


def write_rows_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


@dataclass
class BadFile:
    path: Path
    # line -> (a fragment of the field the error must name, or None; a fragment of the message)
    bad: dict[int, tuple[str | None, str]]
    good_rows: list[Row]


SCATTERED_BAD = [
    # (row, field fragment the error must name, message fragment)
    (
        {"subject_id": "bad-cat", "category": "no.such.category", "decision": "granted"},
        "category",
        "unknown category",
    ),
    ({"subject_id": "bad-dec", "category": "profile", "decision": "maybe"}, "decision", "maybe"),
    (
        {
            "subject_id": "bad-time",
            "category": "profile",
            "decision": "granted",
            "effective": "yesterday",
        },
        "effective",
        "yesterday",
    ),
    ({"subject_id": "", "category": "profile", "decision": "granted"}, "subject_id", "required"),
    (
        {
            "subject_id": "bad-jur",
            "jurisdiction": "XX",
            "category": "profile",
            "decision": "granted",
        },
        "jurisdiction",
        "XX",
    ),
    (
        {
            "subject_id": "bad-minor",
            "minor": "perhaps",
            "category": "profile",
            "decision": "granted",
        },
        "minor",
        "perhaps",
    ),
    (
        {
            "subject_id": "bad-purpose",
            "category": "profile",
            "purpose": "world-domination",
            "decision": "granted",
        },
        "purpose",
        "world-domination",
    ),
    (
        {
            "subject_id": "bad-expiry",
            "category": "profile",
            "decision": "granted",
            "effective": "2030-01-01T00:00:00Z",
            "expires": "2029-01-01T00:00:00Z",
        },
        "expires",
        "later",
    ),
    ({"subject_id": "bad-nodecision", "category": "profile"}, "decision", "without a decision"),
]


def good_row(number: int) -> Row:
    return {
        "subject_id": f"good-{number:03d}",
        "jurisdiction": ("US", "DE", "")[number % 3],
        "category": ("content.public", "profile", "activity")[number % 3],
        "decision": ("granted", "denied", "withdrawn")[number % 3],
    }


def make_bad_file(directory: Path, kind: str) -> BadFile:
    """40 good rows with bad rows scattered among them (every kind of bad row for the format)."""
    bad_rows: list[tuple[Any, str | None, str]] = [
        (row, field_name, message) for row, field_name, message in SCATTERED_BAD
    ]
    if kind == "csv":
        bad_rows.insert(3, ("WRONG-COUNT", None, "fields"))
        bad_rows.append(("WRONG-COUNT", None, "fields"))
    else:
        bad_rows.insert(2, ('{"subject_id": "bad-json", "decision":', None, "not valid JSON"))
        bad_rows.insert(5, ('["not", "an", "object"]', None, "JSON object"))
        bad_rows.append(
            (
                {
                    "subject_id": "bad-column",
                    "category": "profile",
                    "decision": "granted",
                    "favourite_colour": "blue",
                },
                "favourite_colour",
                "unknown column",
            )
        )
    good_rows = [good_row(number) for number in range(40)]
    lines: list[str] = []
    bad: dict[int, tuple[str | None, str]] = {}
    good = iter(good_rows)
    header = ["subject_id", "jurisdiction", "minor", "category", "purpose", "decision"]
    header += ["effective", "expires"]
    first_line = 2 if kind == "csv" else 1

    def render(row: Any) -> str:
        if kind == "csv":
            if row == "WRONG-COUNT":
                return "bad-count,US,profile"
            values = [row.get(name, "") for name in header]
            return ",".join(values)
        if isinstance(row, str):
            return row
        return orjson.dumps({key: value for key, value in row.items() if value != ""}).decode()

    for position in range(len(good_rows) + len(bad_rows)):
        if position % 5 == 2 and bad_rows:
            row, field_name, message = bad_rows.pop(0)
            bad[first_line + len(lines)] = (field_name, message)
        else:
            row = next(good, None)
            if row is None:
                row, field_name, message = bad_rows.pop(0)
                bad[first_line + len(lines)] = (field_name, message)
        lines.append(render(row))
        if kind == "jsonl" and position == 10:
            lines.append("")  # a blank line: skipped, but it still counts as a line
    assert not bad_rows
    path = directory / f"scattered.{kind}"
    prefix = ",".join(header) + "\n" if kind == "csv" else ""
    path.write_text(prefix + "\n".join(lines) + "\n", encoding="utf-8")
    return BadFile(path, bad, good_rows)


def assert_names_every_bad_row(errors: list[RowError], bad_file: BadFile) -> None:
    by_line: dict[int, list[RowError]] = {}
    for error in errors:
        by_line.setdefault(error.line, []).append(error)
    assert sorted(by_line) == sorted(bad_file.bad), (
        f"rejected lines {sorted(by_line)}, bad lines {sorted(bad_file.bad)}:\n"
        + "\n".join(map(str, errors))
    )
    wrong = []
    for line, (field_name, message) in bad_file.bad.items():
        (error,) = by_line[line]
        if field_name is None:
            if message not in error.message:
                wrong.append(f"line {line}: {error} (want {message!r})")
        elif field_name not in (error.field or "") or message not in str(error):
            wrong.append(f"line {line}: {error} (want field {field_name!r}, {message!r})")
    assert not wrong, "\n".join(wrong)


# --- imports of generated files ---------------------------------------------------------------


@pytest.mark.parametrize("pipeline", [True, False], ids=["writer-process", "one-process"])
@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_import_of_generated_rows_lands_every_row(
    ledger: ConsentLedger, tmp_path: Path, kind: str, pipeline: bool
) -> None:
    rows_count, batch_size = 3_000, 500
    writer = write_csv if kind == "csv" else write_jsonl
    path = writer(tmp_path / f"consents.{kind}", rows_count)
    rows = list(generate_rows(rows_count))
    before = snapshot(ledger)
    ticks: list[int] = []

    summary = ledger.import_file(
        path, actor=ACTOR, batch_size=batch_size, progress=ticks.append, pipeline=pipeline
    )

    batches = math.ceil(rows_count / batch_size)
    assert summary.rows == summary.imported_rows == rows_count
    assert summary.invalid == 0
    assert summary.errors == []
    assert not summary.already_imported
    assert summary.skipped_already_done == 0
    assert summary.batches == batches
    assert summary.tree_size == ledger.tree_size()
    assert summary.entries == ledger.tree_size() - before.tree_size
    # One signed checkpoint per batch, and the last covers the whole log.
    assert count(ledger.engine, CheckpointRow) - before.checkpoints == batches
    assert ticks
    assert ticks[-1] == rows_count
    assert ticks == sorted(ticks)
    assert import_rows(ledger.engine) == [(summary.import_id, rows_count, summary.entries, True)]
    assert_import_landed(ledger, rows, before)
    # The import skips the fast path's safety walk: its bytes must still be the reference's.
    with ledger.engine.connect() as connection:
        stored = connection.execute(
            select(col(LogEntryRow.canonical)).where(col(LogEntryRow.seq) >= before.tree_size)
        ).scalars()
        assert all(bytes(rfc8785.dumps(orjson.loads(data))) == data for data in stored)


def test_writes_from_elsewhere_during_a_pipelined_import_are_kept_and_nothing_doubles(
    ledger: ConsentLedger, tmp_path: Path
) -> None:
    # Batches are built ahead on the head the one in flight will leave; another writer
    # moving the head in between must make the import build them again, under the lock.
    rows_count, batch_size = 3_000, 300
    path = write_csv(tmp_path / "consents.csv", rows_count)
    rows = list(generate_rows(rows_count))
    before = snapshot(ledger)
    ticks: list[int] = []

    def write_elsewhere(done: int) -> None:
        ticks.append(done)
        if len(ticks) in (1, 4, 5):
            ledger.register_subject(f"elsewhere-{len(ticks)}", jurisdiction="FR", actor="api")

    summary = ledger.import_file(
        path, actor=ACTOR, batch_size=batch_size, progress=write_elsewhere, pipeline=True
    )

    expected = replay(rows)
    assert summary.imported_rows == rows_count
    assert summary.batches == rows_count // batch_size
    assert ticks == sorted(ticks)
    assert ticks[-1] == rows_count
    assert kinds(ledger.engine) - before.kinds == Counter(
        {
            "subject.registered": expected.registered + 3,
            "subject.updated": expected.updated,
            "consent.recorded": len(expected.decisions),
        }
    )
    assert summary.entries == ledger.tree_size() - before.tree_size - 3
    elsewhere = {f"elsewhere-{tick}": ("FR", False) for tick in (1, 4, 5)}
    assert stored_subjects(ledger.engine) == {**expected.subjects, **elsewhere}
    assert_decisions_match(ledger.engine, expected.decisions)
    assert verify_ledger(ledger.engine).entries == ledger.tree_size()


def test_a_writer_process_that_dies_fails_the_import_clearly_and_it_resumes(
    ledger: ConsentLedger, tmp_path: Path
) -> None:
    rows_count, batch_size = 3_000, 300
    path = write_csv(tmp_path / "consents.csv", rows_count)
    rows = list(generate_rows(rows_count))
    before = snapshot(ledger)

    def kill_the_writer(done: int) -> None:
        if done >= 2 * batch_size:
            for child in psutil.Process().children():
                if "ledger.importing.writer_process" in child.cmdline():
                    child.kill()
                    child.wait(timeout=WAIT)

    with pytest.raises(ImportWriteFailed, match="writer process stopped.*run the import again"):
        ledger.import_file(
            path, actor=ACTOR, batch_size=batch_size, progress=kill_the_writer, pipeline=True
        )
    ((_, rows_done, _, finished),) = import_rows(ledger.engine)
    assert not finished
    assert 2 * batch_size <= rows_done < rows_count
    verify_ledger(ledger.engine)

    summary = ledger.import_file(path, actor=ACTOR, batch_size=batch_size, pipeline=True)
    assert summary.skipped_already_done == rows_done
    assert_import_landed(ledger, rows, before)


def test_a_prepared_batch_whose_tree_does_not_give_its_signed_root_is_refused(
    ledger: ConsentLedger,
) -> None:
    # The writer process stores the tree's new nodes it was sent, and writes nothing
    # unless the right edge they leave gives the root the batch's checkpoint signs.
    before = snapshot(ledger)
    with read_session(ledger.engine) as session:
        head = read_head(session)
    writer = LogWriter.at(head, actor=ACTOR, keep_nodes=False, subject_of=entries.subject_of)
    for number in range(3):
        writer.append(
            "subject.registered",
            {"subject": f"{number:032x}", "commitment": "c", "jurisdiction": None, "minor": False},
        )
    prepared = writer.prepare([ledger.signing_key()], Projector().project)
    assert prepared.levels is not None
    assert len(prepared.levels[0]) == 3 * 32
    # A node of the new right edge, changed.
    level, index = next(
        (level, index)
        for level, index in merkle.root_node_keys(prepared.tree_size)
        if index >= head.size >> level
    )
    levels = [bytearray(nodes) for nodes in prepared.levels]
    levels[level][(index - (head.size >> level)) * 32] ^= 1
    changed = dataclasses.replace(prepared, levels=tuple(map(bytes, levels)))
    # A level cut short by a byte.
    short = dataclasses.replace(prepared, levels=(prepared.levels[0][:-1], *prepared.levels[1:]))

    for forged, message in ((changed, "do not give the root"), (short, "malformed")):
        with pytest.raises(VerificationError, match=message):
            with write_session(ledger.engine) as session:
                write_prepared(session, forged)
        assert snapshot(ledger) == before
    with write_session(ledger.engine) as session:
        write_prepared(session, prepared)
    assert ledger.tree_size() == before.tree_size + 3
    verify_ledger(ledger.engine)


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_registration_rows_and_common_column_spellings(
    ledger: ConsentLedger, tmp_path: Path, kind: str
) -> None:
    header = ["user_id", "country", "is_minor", "status", "category", "purpose"]
    table = [
        ["alias-1", "de", "", "granted", "profile", ""],
        ["alias-2", "US", "yes", "", "", ""],  # registration only: a US minor
        ["alias-1", "FR", "", "", "", ""],  # registration only: alias-1 moved
        ["alias-2", "US", "yes", "", "", ""],  # the same attributes again: nothing to write
        ["alias-3", "", "", "denied", "location", "data-mining"],
        ["alias-4", "BR", "no", "", "", ""],
        ["alias-4", "", "true", "", "", ""],  # became a minor; jurisdiction unchanged
    ]
    if kind == "csv":
        path = write_rows_csv(tmp_path / "aliases.csv", header, table)
    else:
        path = tmp_path / "aliases.jsonl"
        path.write_bytes(
            b"".join(
                orjson.dumps({k: v for k, v in zip(header, values, strict=True) if v}) + b"\n"
                for values in table
            )
        )
    before = snapshot(ledger)

    summary = ledger.import_file(path, actor=ACTOR)

    assert summary.rows == len(table)
    assert summary.invalid == 0
    assert kinds(ledger.engine) - before.kinds == Counter(
        {"subject.registered": 4, "subject.updated": 2, "consent.recorded": 2}
    )
    assert stored_subjects(ledger.engine) == {
        "alias-1": ("FR", False),
        "alias-2": ("US", True),
        "alias-3": (None, False),
        "alias-4": ("BR", True),
    }
    for subject_id, jurisdiction, minor in (
        ("alias-1", "FR", False),
        ("alias-2", "US", True),
        ("alias-4", "BR", True),
    ):
        view = ledger.subject_view(subject_id)
        assert (view.jurisdiction, view.minor) == (jurisdiction, minor)
    granted = ledger.check("alias-1", "profile")
    assert (granted.eligible, granted.reason) == (True, "consent")
    refused = ledger.check("alias-3", "location", "data-mining")
    assert (refused.eligible, refused.reason) == (False, "refused")
    assert ledger.check("alias-2", "content.public").reason == "minor"
    verify_ledger(ledger.engine)


# --- bad rows -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_bad_rows_are_all_named_and_nothing_is_written(
    ledger: ConsentLedger, tmp_path: Path, kind: str
) -> None:
    bad_file = make_bad_file(tmp_path, kind)
    before = snapshot(ledger)

    with pytest.raises(ImportRejected) as caught:
        ledger.import_file(bad_file.path, actor=ACTOR, batch_size=5)

    assert_names_every_bad_row(caught.value.errors, bad_file)
    message = str(caught.value)
    for line in bad_file.bad:
        assert f"line {line}" in message, message
    assert f"{len(bad_file.bad)} of {len(bad_file.bad) + len(bad_file.good_rows)} rows" in message
    assert snapshot(ledger) == before, "a rejected import wrote something"
    verify_ledger(ledger.engine)


def test_an_unknown_csv_column_rejects_the_file_naming_the_column(
    ledger: ConsentLedger, tmp_path: Path
) -> None:
    path = write_rows_csv(
        tmp_path / "extra.csv",
        ["subject_id", "decision", "category", "favourite_colour"],
        [["col-1", "granted", "profile", "blue"], ["col-2", "denied", "location", "red"]],
    )
    before = snapshot(ledger)
    with pytest.raises(ImportRejected) as caught:
        ledger.import_file(path, actor=ACTOR)
    assert [error.line for error in caught.value.errors] == [2, 3]
    assert all(error.field == "favourite_colour" for error in caught.value.errors)
    assert "favourite_colour" in str(caught.value)
    assert snapshot(ledger) == before


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_skip_invalid_lands_the_good_rows_and_rejects_exactly_the_bad(
    ledger: ConsentLedger, tmp_path: Path, kind: str
) -> None:
    bad_file = make_bad_file(tmp_path, kind)
    before = snapshot(ledger)
    rejected: list[RowError] = []

    summary = ledger.import_file(
        bad_file.path, actor=ACTOR, batch_size=7, skip_invalid=True, on_reject=rejected.append
    )

    assert_names_every_bad_row(rejected, bad_file)
    assert summary.invalid == len(bad_file.bad)
    assert summary.rows == len(bad_file.bad) + len(bad_file.good_rows)
    assert summary.imported_rows == len(bad_file.good_rows)
    assert sorted(error.line for error in summary.errors) == sorted(bad_file.bad)
    assert_import_landed(ledger, bad_file.good_rows, before)
    # Subjects that appear only in bad rows were not registered.
    assert not any(subject.startswith("bad-") for subject in stored_subjects(ledger.engine))


# --- importing the same file again ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_reimporting_the_same_file_adds_nothing(
    ledger: ConsentLedger, tmp_path: Path, kind: str
) -> None:
    writer = write_csv if kind == "csv" else write_jsonl
    path = writer(tmp_path / f"once.{kind}", 700)
    first = ledger.import_file(path, actor=ACTOR, batch_size=300)
    assert not first.already_imported
    assert first.entries > 0
    after_first = snapshot(ledger)

    again = ledger.import_file(path, actor=ACTOR, batch_size=300)
    assert again.already_imported
    assert again.import_id == first.import_id
    assert (again.entries, again.batches, again.imported_rows) == (0, 0, 0)
    assert again.tree_size == after_first.tree_size
    assert snapshot(ledger) == after_first

    # The import is known by its content: the same bytes under another name add nothing either.
    copy = shutil.copyfile(path, tmp_path / f"renamed-copy.{kind}")
    assert ledger.import_file(copy, actor=ACTOR, batch_size=50).already_imported
    assert snapshot(ledger) == after_first
    verify_ledger(ledger.engine)


def test_reimport_with_skip_invalid_adds_nothing(ledger: ConsentLedger, tmp_path: Path) -> None:
    bad_file = make_bad_file(tmp_path, "csv")
    ledger.import_file(bad_file.path, actor=ACTOR, skip_invalid=True)
    after_first = snapshot(ledger)
    again = ledger.import_file(bad_file.path, actor=ACTOR, skip_invalid=True)
    assert again.already_imported
    assert snapshot(ledger) == after_first


# --- erased subjects ---------------------------------------------------------------------


def test_a_row_naming_an_erased_subject_is_rejected(ledger: ConsentLedger, tmp_path: Path) -> None:
    ledger.register_subject("gone", jurisdiction="US", actor=ACTOR)
    ledger.erase_subject("gone", actor=ACTOR)
    path = write_rows_csv(
        tmp_path / "erased.csv",
        ["subject_id", "jurisdiction", "decision", "category"],
        [
            ["kept-1", "US", "granted", "profile"],
            ["gone", "US", "granted", "profile"],
            ["kept-2", "DE", "", ""],
            ["gone", "FR", "", ""],  # a registration-only row: must not resurrect it either
        ],
    )
    before = snapshot(ledger)

    with pytest.raises(ImportRejected) as caught:
        ledger.import_file(path, actor=ACTOR)
    errors = caught.value.errors
    assert [(error.line, error.field) for error in errors] == [(3, "subject_id"), (5, "subject_id")]
    assert all("erased" in error.message for error in errors)
    assert snapshot(ledger) == before

    rejected: list[RowError] = []
    summary = ledger.import_file(path, actor=ACTOR, skip_invalid=True, on_reject=rejected.append)
    assert [error.line for error in rejected] == [3, 5]
    assert summary.imported_rows == 2
    assert set(stored_subjects(ledger.engine)) == {"kept-1", "kept-2"}
    answer = ledger.check("gone", "profile")
    assert (answer.eligible, answer.reason) == (False, "erased")
    verify_ledger(ledger.engine)


# --- what real exports look like ---------------------------------------------------------------


def test_a_csv_with_a_byte_order_mark_imports(ledger: ConsentLedger, tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfsubject_id,decision,category\nbom-1,granted,profile\n")
    summary = ledger.import_file(path, actor=ACTOR)
    assert summary.imported_rows == 1
    assert ledger.check("bom-1", "profile").reason == "consent"


def test_a_file_that_is_not_utf8_is_refused_naming_the_line(
    ledger: ConsentLedger, tmp_path: Path
) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(
        b"subject_id,decision,category\nok-1,granted,profile\nJos\xe9,granted,profile\n"
    )
    before = snapshot(ledger)
    # An encoding problem is the file's, not a row's: the whole file is refused.
    with pytest.raises(InvalidInput, match="line 3: not valid UTF-8"):
        ledger.import_file(path, actor=ACTOR)
    assert snapshot(ledger) == before


# --- resume after SIGKILL ------------------------------------------------------------------


@pytest.mark.slow
def test_an_import_killed_halfway_resumes_and_lands_every_row_once(
    ledger: ConsentLedger, settings: Settings, tmp_path: Path
) -> None:
    rows_count, batch_size = 20_000, 200
    path = write_csv(tmp_path / "big.csv", rows_count)
    rows = list(generate_rows(rows_count))
    before = snapshot(ledger)
    # Kill once a few batches (about 1.3 entries per row) are committed.
    kill_at = before.tree_size + 4 * batch_size

    stderr_path = tmp_path / "bulk_import.err"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CONSENT_LEDGER_KEY_PASSPHRASE", None)
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(BULK_IMPORT),
                str(settings.home),
                settings.resolved_database_url,
                str(path),
                "--batch-size",
                str(batch_size),
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=ROOT,
            env=env,
        )
    try:
        deadline = time.monotonic() + WAIT
        size = before.tree_size
        while size < kill_at:
            if proc.poll() is not None:
                pytest.fail(
                    f"the import exited ({proc.returncode}) before it could be killed at tree "
                    f"size {size}; stderr:\n{stderr_path.read_text(errors='replace')[-4000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"the import reached only tree size {size} in {WAIT} s")
            time.sleep(0.005)
            size = ledger.tree_size()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stdout is not None
        output = proc.stdout.read()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert b'"done"' not in output, "the import finished before the kill"

    # The crash left a log that verifies, and a resume point at a batch boundary.
    verify_ledger(ledger.engine)
    ((import_id, rows_done, _, finished),) = import_rows(ledger.engine)
    assert not finished
    assert 0 < rows_done < rows_count, rows_done
    assert rows_done % batch_size == 0, rows_done
    killed_at = ledger.tree_size()
    assert killed_at < before.tree_size + rows_count

    summary = ledger.import_file(path, actor=ACTOR, batch_size=batch_size)

    assert summary.import_id == import_id
    assert not summary.already_imported
    assert summary.skipped_already_done == rows_done
    assert summary.imported_rows == rows_count - rows_done
    assert summary.tree_size == ledger.tree_size() == killed_at + summary.entries
    ((_, rows_done_now, _, finished_now),) = import_rows(ledger.engine)
    assert (rows_done_now, finished_now) == (rows_count, True)
    # Every record exactly once: decisions in file order, one registration per subject.
    assert_import_landed(ledger, rows, before)
    with ledger.engine.connect() as connection:
        registered = connection.execute(
            select(col(LogEntryRow.subject)).where(col(LogEntryRow.kind) == "subject.registered")
        ).all()
    assert len(registered) == len(set(registered)) == len(replay(rows).subjects)

    again = ledger.import_file(path, actor=ACTOR, batch_size=batch_size)
    assert again.already_imported
    assert again.tree_size == summary.tree_size


def test_fields_constant_matches_what_the_spec_lists() -> None:
    # SPEC §5 `import`: the fields a file may carry (the generator and these tests rely on it).
    assert set(FIELDS) == {
        "subject_id",
        "jurisdiction",
        "minor",
        "category",
        "purpose",
        "decision",
        "explicit",
        "effective",
        "expires",
        "method",
        "notice",
    }
