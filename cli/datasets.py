"""`consent-ledger dataset …`: recorded builds, their purge obligations, purges and retirements
(SPEC §7). Builds are recorded by `consent-ledger filter … --record NAME@VERSION`."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
from collections import Counter
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import IO, Annotated, Any

import orjson
import typer
from rich import box
from rich.console import Console
from rich.table import Table

from cli.common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    JSON_OPTION,
    console,
    fail,
    guarded,
    open_ledger,
    print_json,
    styled,
)
from ledger.consent.datasets import parse_build
from ledger.errors import InvalidInput
from ledger.service import ConsentLedger, cli_actor
from ledger.service.datasets import MAX_PAGE, PAGE

app = typer.Typer(
    help="Recorded dataset builds (`filter --record`), the records that must leave them "
    "(purge obligations), purges and retirements."
)

# CSV of obligations: record ids first, so a pipeline can cut them straight into its delete job.
OBLIGATION_COLUMNS = (
    "record_id",
    "dataset",
    "version",
    "reason",
    "cause",
    "cause_time",
    "due",
    "status",
)

BuildArg = Annotated[
    str, typer.Argument(metavar="NAME@VERSION", help="A build, e.g. posts-train@1.")
]


class Status(StrEnum):
    open = "open"
    overdue = "overdue"
    fulfilled = "fulfilled"
    cancelled = "cancelled"


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def _build(text: str) -> tuple[str, str]:
    return parse_build(text, field="NAME@VERSION")


def _can_ask() -> bool:
    """Whether a person is there to confirm (a terminal on stdin)."""
    return sys.stdin.isatty()


@app.command("list")
@guarded
def list_builds(
    name: Annotated[str | None, typer.Argument(help="Only this dataset's builds.")] = None,
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """Every recorded build (of one dataset), oldest first, with its obligations.

    Example: consent-ledger dataset list posts-train
    """
    with open_ledger() as ledger:
        builds = ledger.dataset_builds(name)
    if as_json:
        print_json({"builds": builds})
        return
    if not builds:
        console.print("no dataset builds have been recorded (`consent-ledger filter --record`)")
        return
    table = Table(
        title="Dataset builds", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False
    )
    table.add_column("build", no_wrap=True)
    table.add_column("purpose")
    for column in ("entry", "recorded", "records", "members", "open", "overdue", "fulfilled"):
        table.add_column(column, justify="left" if column == "recorded" else "right")
    for build in builds:
        counts = build["obligations"]
        retired = build["retired"]
        table.add_row(
            f"{build['dataset']}@{build['version']}"
            + ("" if retired is None else f" (retired, entry {retired})"),
            build["purpose"],
            str(build["seq"]),
            build["time"][:16].replace("T", " "),
            str(build["records"]),
            str(build["members"]),
            str(counts["open"]),
            styled(str(counts["overdue"]), "red") if counts["overdue"] else "0",
            str(counts["fulfilled"]),
        )
    _print_unsqueezed(table)


def _print_unsqueezed(table: Table) -> None:
    """Squeezed to fit a terminal; piped or captured, printed at its natural width."""
    if console.is_terminal:
        console.print(table)
        return
    natural = console.measure(table, options=console.options.update(max_width=10_000)).maximum
    Console(highlight=False, markup=False, width=max(natural, console.width)).print(table)


@app.command("show")
@guarded
def show(build: BuildArg, as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """A build's summary; with --json also its receipt (the signed `dataset.recorded` entry).

    Example: consent-ledger dataset show posts-train@1 --json > posts-train-1.json
    """
    dataset, version = _build(build)
    with open_ledger() as ledger:
        document = ledger.dataset_build(dataset, version)
    if as_json:
        print_json(document)
        return
    summary = document["build"]
    counts = summary["obligations"]
    retired = summary["retired"]
    console.print(
        styled(f"{dataset}@{version}", "bold") + f"  purpose {summary['purpose']}  recorded as "
        f"entry {summary['seq']} at {summary['time']}"
    )
    console.print(
        f"  checked at tree size {summary['checked_at']}, at {summary['at']}, "
        f"policy v{summary['policy_version']}"
    )
    console.print(
        f"  records {summary['records']}: {summary['members']} members now, "
        f"{summary['purged']} purged" + ("" if retired is None else f", retired by entry {retired}")
    )
    console.print(f"  members_root {summary['members_root']}")
    console.print(
        f"  obligations: {counts['open']} open ({counts['overdue']} overdue), "
        f"{counts['fulfilled']} fulfilled, {counts['cancelled']} cancelled"
    )
    console.print("use --json for the receipt, an evidence bundle that verifies offline")


@app.command("obligations")
@guarded
def obligations(
    name: Annotated[str, typer.Argument(help="The dataset, e.g. posts-train.")],
    version: Annotated[str | None, typer.Option(help="Only this version's.")] = None,
    status: Annotated[Status | None, typer.Option(help="Only obligations in this state.")] = None,
    fmt: Annotated[
        Format | None, typer.Option("--format", "-f", help="table (default), csv or json.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The same as --format json.")] = False,
) -> None:
    """The records that must be purged from a dataset's builds, why, since when and by when.

    Every page is followed; CSV (record_id first) and JSON stream, whatever their size.

    Example: consent-ledger dataset obligations posts-train --status open --format csv
    """
    if as_json and fmt not in (None, Format.json):
        raise InvalidInput("give --json or --format, not both", field="--json")
    chosen = Format.json if as_json else (fmt or Format.table)
    wanted = None if status is None else status.value
    with open_ledger() as ledger, _stdout_may_close():
        # A table's page is what a person reads at once; the streams take the largest.
        rows = _all_obligations(
            ledger, name, version, wanted, PAGE if chosen is Format.table else MAX_PAGE
        )
        if chosen is Format.csv:
            _obligations_csv(rows, sys.stdout)
        elif chosen is Format.json:
            _obligations_json(rows, sys.stdout)
        else:
            what = name if version is None else f"{name}@{version}"
            _obligations_table(rows, what, wanted)


def _all_obligations(
    ledger: ConsentLedger, name: str, version: str | None, status: str | None, limit: int
) -> Iterator[list[dict[str, Any]]]:
    """Pages of obligations, following `next` to the end. The first is asked for at once,
    so that an unknown dataset fails before a CSV header or a JSON opening is printed."""

    def ask(after: int | None) -> dict[str, Any]:
        return ledger.obligations(name, version=version, status=status, after=after, limit=limit)

    def pages(page: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
        while True:
            yield page["obligations"]
            if page["next"] is None:
                return
            page = ask(page["next"])

    return pages(ask(None))


def _obligations_csv(pages: Iterator[list[dict[str, Any]]], out: IO[str]) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(OBLIGATION_COLUMNS)
    for page in pages:
        writer.writerows([_cell(row[column]) for column in OBLIGATION_COLUMNS] for row in page)
        out.flush()


def _cell(value: Any) -> Any:
    # An erased subject's record id is gone once purged: an empty cell, not "None".
    return "" if value is None else value


def _obligations_json(pages: Iterator[list[dict[str, Any]]], out: IO[str]) -> None:
    """One JSON document, `{"obligations": [...]}`, written an obligation per line."""
    out.write('{"obligations": [')
    separator = "\n"
    for page in pages:
        for row in page:
            out.write(separator + orjson.dumps(row).decode())
            separator = ",\n"
        out.flush()
    out.write("\n]}\n")


def _obligations_table(
    pages: Iterator[list[dict[str, Any]]], what: str, status: str | None
) -> None:
    """Aligned lines, written a page at a time (a million rows never sit in one table)."""
    counts: Counter[str] = Counter()
    line = ""
    for page in pages:
        if not page:
            continue
        if not line:
            # Widths from the first page; a longer record id later only pushes its own line.
            record = min(40, max(len("record_id"), *(len(row["record_id"] or "") for row in page)))
            version = max(len("version"), *(len(row["version"]) for row in page))
            reason = max(len("reason"), *(len(row["reason"]) for row in page))
            line = (
                f"{{:<{record}}}  {{:<{version}}}  {{:<{reason}}}  {{:>5}}  {{:<20}}  {{:<20}}  "
                "{:<9}  {}"
            )
            console.print(
                styled(f"Obligations of {what}", "italic")
                + ("" if status is None else f" ({status})")
            )
            header = line.format(
                "record_id", "version", "reason", "cause", "since", "due", "status", "closed by"
            )
            console.print(styled(header.rstrip(), "bold"))
        for row in page:
            counts[row["status"]] += 1
            text = line.format(
                "(erased, purged)" if row["record_id"] is None else row["record_id"],
                row["version"],
                row["reason"],
                row["cause"],
                _seconds(row["cause_time"]),
                _seconds(row["due"]),
                row["status"],
                "" if row["closed_by"] is None else f"entry {row['closed_by']}",
            ).rstrip()
            console.print(styled(text, "red") if row["status"] == "overdue" else text)
    if not counts:
        console.print(
            f"no obligations of {what}" + ("" if status is None else f" with status {status}")
        )
        return
    total = sum(counts.values())
    console.print(
        f"{total} obligation{'s' if total != 1 else ''}: "
        + ", ".join(f"{number} {state}" for state, number in sorted(counts.items()))
    )


def _seconds(timestamp: str) -> str:
    """`2026-01-02T03:04:05.678901Z` → `2026-01-02T03:04:05Z` (exact values: csv or json)."""
    return timestamp[:19] + "Z"


@contextlib.contextmanager
def _stdout_may_close() -> Iterator[None]:
    """A reader that stops early (`… | head`) ends a listing quietly, not with an error."""
    try:
        yield
    except BrokenPipeError:
        # Point stdout at /dev/null so that the flush at exit does not fail again.
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(EXIT_FAILURE) from None


@app.command("purge")
@guarded
def purge(
    build: BuildArg,
    file: Annotated[
        str,
        typer.Argument(
            metavar="FILE",
            help="Record ids: a CSV with a record_id column, or one id per line; - for stdin.",
        ),
    ],
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """Record that these records were deleted from the build: each fulfils its obligation,
    if it has one (otherwise it is a voluntary removal, counted apart).

    Every id must be a member still; otherwise nothing is purged and the error names them.

    Example: consent-ledger dataset obligations posts-train --status open -f csv |
    consent-ledger dataset purge posts-train@1 -
    """
    dataset, version = _build(build)
    if file == "-":
        record_ids = _record_ids(sys.stdin, "stdin")
    else:
        with Path(file).open(newline="", encoding="utf-8-sig") as handle:
            record_ids = _record_ids(handle, file)
    with open_ledger() as ledger:
        try:
            result = ledger.purge_records(dataset, version, record_ids, actor=cli_actor())
        except InvalidInput as exc:
            # The file's ids are at fault (not members, repeated, malformed), not the command.
            raise fail(str(exc)) from None
    document = result.to_json()
    if as_json:
        print_json(document)
        return
    console.print(
        f"purged {document['records']} record{'s' if document['records'] != 1 else ''} from "
        f"{dataset}@{version} as entry {document['seq']}: {document['fulfils']} fulfil "
        f"obligations, {document['voluntary']} voluntary"
    )


def _record_ids(lines: IO[str], name: str) -> list[str]:
    """The ids of a purge file: a CSV whose header has `record_id`, or one id per line."""
    first = lines.readline()
    if not first:
        raise fail(f"{name} lists no record ids")
    header = next(csv.reader([first]))
    if "record_id" not in header:
        # One id per line, kept exactly (an id may hold commas or spaces); blank lines skipped.
        ids = [line.rstrip("\r\n") for line in [first, *lines]]
        return [record_id for record_id in ids if record_id]
    column = header.index("record_id")
    record_ids = []
    for number, row in enumerate(csv.reader(lines), start=2):
        if not row:
            continue
        if column >= len(row) or not row[column]:
            raise fail(f"{name} line {number}: no record_id")
        record_ids.append(row[column])
    if not record_ids:
        raise fail(f"{name} lists no record ids")
    return record_ids


@app.command("retire")
@guarded
def retire(
    build: BuildArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """Record that a whole build was deleted everywhere; its open obligations are fulfilled.

    Irreversible: asks for confirmation unless --yes.

    Example: consent-ledger dataset retire posts-train@1 --yes
    """
    dataset, version = _build(build)
    if not yes and not _can_ask():
        raise fail(
            f"retiring {dataset}@{version} cannot be undone: confirm with --yes "
            "(there is no terminal to ask on)",
            EXIT_USAGE,
        )
    with open_ledger() as ledger:
        if not yes:
            summary = ledger.dataset_build(dataset, version)["build"]
            if summary["retired"] is not None:
                raise fail(f"{dataset}@{version} was retired already (entry {summary['retired']})")
            open_count = summary["obligations"]["open"]
            if not typer.confirm(
                f"Retire {dataset}@{version} ({summary['members']} members, {open_count} open "
                "obligations)? This cannot be undone",
                default=False,
            ):
                raise fail("nothing retired")
        result = ledger.retire_build(dataset, version, actor=cli_actor())
    if as_json:
        print_json(result)
        return
    console.print(
        f"retired {dataset}@{version} as entry {result['seq']}: {result['fulfils']} "
        f"obligation{'s' if result['fulfils'] != 1 else ''} fulfilled"
    )


@app.command("sweep")
@guarded
def sweep(as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """Bring the obligations up to the clock: decisions that expired or took effect since,
    and a policy's re-evaluation. `serve` does this by itself; run it from cron otherwise.

    Example: consent-ledger dataset sweep
    """
    with open_ledger() as ledger:
        result = ledger.sweep_obligations()
    if as_json:
        print_json(result)
        return
    console.print(
        f"obligations are current until {result['swept_until']} through entry "
        f"{result['through_seq']} ({result['transactions']} transaction"
        f"{'s' if result['transactions'] != 1 else ''})"
    )


@app.command("proof")
@guarded
def proof(
    build: BuildArg,
    record_id: Annotated[str, typer.Argument(help="The member's record id.")],
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """Prove that a record is a member of a build: its leaf, its inclusion proof in the
    build's members_root, and the signed `dataset.recorded` entry naming that root.

    Example: consent-ledger dataset proof posts-train@1 post-17 --json > member.json
    """
    dataset, version = _build(build)
    with open_ledger() as ledger:
        document = ledger.member_proof(dataset, version, record_id)
    if as_json:
        print_json(document)
        return
    entry = document["entry"]["entries"][0]
    console.print(
        f"{record_id} is member {document['index']} of {document['records']} of {dataset}@{version}"
    )
    console.print(f"leaf {orjson.dumps(document['leaf']).decode()}")
    console.print(
        f"members_root {entry['entry']['data']['members_root']} signed in entry {entry['index']}; "
        f"{len(document['hashes'])} proof hashes"
    )
    for node in document["hashes"]:
        console.print(f"  {node}")
    console.print("use --json for the proof an auditor checks with the verifier key alone")
