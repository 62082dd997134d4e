"""`consent-ledger report …` and `consent-ledger verify-report`: signed audit reports."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import JSON_OPTION, console, err_console, guarded, open_ledger, print_json, styled
from ledger.reports import (
    dumps_document,
    load_document,
    period_report,
    subject_report,
    verify_report,
)
from ledger.reports.html import render_html
from ledger.reports.rows import render_csv
from ledger.service import ConsentLedger
from ledger.tlog.notes import VerifierKey

app = typer.Typer(
    help="Signed audit reports (JSON, HTML, CSV) that an auditor can verify offline "
    "with `consent-ledger verify-report`."
)


class Format(StrEnum):
    json = "json"
    html = "html"
    csv = "csv"


FormatOption = Annotated[Format, typer.Option("--format", "-f", help="json, html or csv.")]
OutOption = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Write here instead of to stdout.", dir_okay=False),
]


class CsvRows(StrEnum):
    entries = "entries"
    datasets = "datasets"


def _emit(
    ledger: ConsentLedger,
    document: dict[str, Any],
    fmt: Format,
    out: Path | None,
    rows: CsvRows = CsvRows.entries,
) -> None:
    if fmt is Format.json:
        data = dumps_document(document)
    elif fmt is Format.html:
        data = render_html(document, ledger.signing_key()).encode("utf-8")
    else:
        data = render_csv(document, rows=rows.value).encode("utf-8")
    if out is None:
        sys.stdout.buffer.write(data if data.endswith(b"\n") else data + b"\n")
        sys.stdout.buffer.flush()
        return
    out.write_bytes(data)
    content = document["report"]
    err_console.print(
        f"wrote {content['kind']} report ({fmt.value}, {len(data):,} bytes) to {out}; "
        f"sha256 {document['signature']['sha256']}"
    )


@app.command("subject")
@guarded
def subject(
    subject_id: Annotated[str, typer.Argument(help="The platform's id for the person.")],
    fmt: FormatOption = Format.json,
    out: OutOption = None,
    at: Annotated[
        str | None, typer.Option(help="Evaluate eligibility at this RFC 3339 time (now).")
    ] = None,
) -> None:
    """Everything about one person: every decision (time, method, notice, policy version)
    as ISO/IEC TS 27560 consent records, eligibility for every category × purpose with its
    reason, and the evidence bundle proving it (GDPR Art. 15 and 7(1)).

    Example: consent-ledger report subject user-42 --format html --out user-42.html
    """
    with open_ledger() as ledger:
        document = subject_report(ledger, subject_id, at=at)
        _emit(ledger, document, fmt, out)


@app.command("period")
@guarded
def period(
    start: Annotated[
        str | None,
        typer.Option(
            "--from", help="Start (RFC 3339 time or date), inclusive; default: the start."
        ),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option("--to", help="End (RFC 3339 time or date), exclusive; default: now."),
    ] = None,
    fmt: FormatOption = Format.json,
    out: OutOption = None,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Skip the full verify of the ledger.")
    ] = False,
    rows: Annotated[
        CsvRows,
        typer.Option(
            "--rows",
            help="With --format csv: one row per entry (entries) or per dataset (datasets).",
        ),
    ] = CsvRows.entries,
) -> None:
    """Every change recorded in a window, with counts by category, purpose, decision,
    regime and method, withdrawal and refusal rates over time, the policy versions in
    force, dataset builds and purge obligations, the checkpoints with a consistency
    proof, and the result of a full verify.

    Example: consent-ledger report period --from 2026-01-01 --to 2026-07-01 --format html -o h1.html
    """
    with open_ledger() as ledger:
        document, _ = period_report(ledger, start=start, end=end, run_verify=not no_verify)
        _emit(ledger, document, fmt, out, rows)


@guarded
def verify_report_command(
    path: Annotated[
        Path,
        typer.Argument(help="A JSON or HTML report.", exists=True, dir_okay=False),
    ],
    key: Annotated[list[str], typer.Option("--key", help="A trusted verifier key (repeatable).")],
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """Check a report offline, with no database: its signature, every proof inside, and
    that every figure follows from the evidence it carries. Exits 1 and says what failed.

    Example: consent-ledger verify-report period.html --key "$(consent-ledger keys show)"
    """
    keys = [VerifierKey.parse(text) for text in key]
    result = verify_report(load_document(path.read_bytes()), keys)
    if as_json:
        print_json(result.to_json())
        return
    console.print(
        styled("OK", "green") + f": {result.kind} report of {result.origin} verified "
        f"(sha256 {result.sha256})"
    )
    for line in result.checks:
        console.print(f"  - {line}")
