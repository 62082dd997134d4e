"""`consent-ledger import FILE`: bulk registrations and decisions from CSV or JSONL."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cli.common import JSON_OPTION, console, err_console, guarded, open_ledger, print_json
from ledger.errors import InvalidInput
from ledger.importing import DEFAULT_BATCH, FIELDS, ImportRejected, RowError
from ledger.service import cli_actor

HELP = f"""Import subject registrations and consent decisions from CSV (header row) or JSONL.

Columns: {", ".join(FIELDS)}. Only subject_id is required. A row without a
decision registers or updates the subject; a row with one records it, first
registering the subject (with the row's jurisdiction/minor) if it is new.
Defaults: purpose ai-training, effective now, method import.

Every row is validated before anything is written; with any bad row nothing
is written unless --skip-invalid. Re-importing the same file adds nothing; an
interrupted import resumes where it stopped.

Example: consent-ledger import decisions.csv --skip-invalid --rejects rejects.csv
"""


def import_command(
    path: Annotated[Path, typer.Argument(help="CSV or JSONL file.", exists=True, dir_okay=False)],
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Import the good rows, reject the bad.")
    ] = False,
    rejects: Annotated[
        Path | None, typer.Option(help="Write rejected rows with their errors here (CSV).")
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Rows per transaction (one checkpoint each).")
    ] = DEFAULT_BATCH,
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    if rejects is not None and not skip_invalid:
        raise InvalidInput("--rejects needs --skip-invalid", field="--rejects")
    writer: Any = None
    handle = None
    if rejects is not None:
        handle = rejects.open("w", newline="", encoding="utf-8")
        writer = csv.writer(handle)
        writer.writerow(["line", "field", "error", "row"])

    def on_reject(error: RowError) -> None:
        if writer is not None:
            writer.writerow(
                [error.line, error.field or "", error.message, orjson.dumps(error.raw).decode()]
            )

    try:
        with (
            open_ledger() as ledger,
            Progress(
                SpinnerColumn(),
                TextColumn("importing"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} rows/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err_console,
                transient=True,
            ) as progress,
        ):
            task = progress.add_task("import", total=None, rate="…")

            def advance(rows: int) -> None:
                elapsed = progress.tasks[0].elapsed or 1e-9
                progress.update(task, completed=rows, rate=f"{rows / elapsed:,.0f}")

            summary = ledger.import_file(
                path,
                actor=cli_actor(),
                batch_size=batch_size,
                skip_invalid=skip_invalid,
                on_reject=on_reject,
                progress=advance,
            )
    except ImportRejected as exc:
        # Every bad row, one per line: the message alone stops at the first 50.
        err_console.print(str(exc).splitlines()[0])
        for error in exc.errors:
            err_console.print(f"  {error}")
        raise typer.Exit(2) from None
    finally:
        if handle is not None:
            handle.close()
    if as_json:
        print_json(summary.to_json())
        return
    if summary.already_imported:
        console.print(f"already imported (import {summary.import_id[:12]}): nothing added")
        return
    resumed = (
        f", resumed after row {summary.skipped_already_done}"
        if summary.skipped_already_done
        else ""
    )
    console.print(
        f"imported {summary.imported_rows} rows as {summary.entries} entries in "
        f"{summary.batches} checkpoints{resumed}; {summary.invalid} rejected; "
        f"tree size {summary.tree_size}"
    )


import_command.__doc__ = HELP
import_command = guarded(import_command)
