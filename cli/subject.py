"""`consent-ledger subject …`: register, show and erase subjects."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cli.common import JSON_OPTION, console, guarded, open_ledger, print_json, styled
from ledger.service import cli_actor

app = typer.Typer(help="Register, inspect and erase subjects (the platform's users).")


@app.command("register")
@guarded
def register(
    subject_id: Annotated[str, typer.Argument(help="The platform's own id for the person.")],
    jurisdiction: Annotated[
        str | None, typer.Option(help="ISO 3166-1 alpha-2 country code, e.g. DE.")
    ] = None,
    minor: Annotated[bool, typer.Option("--minor", help="The subject is a minor.")] = False,
) -> None:
    """Register a subject, or update its jurisdiction and minor flag.

    Example: consent-ledger subject register user-42 --jurisdiction DE
    """
    with open_ledger() as ledger:
        sealed = ledger.register_subject(
            subject_id, jurisdiction=jurisdiction, minor=minor, actor=cli_actor()
        )
    if sealed is None:
        console.print(f"subject {subject_id} unchanged")
    else:
        entry = sealed.entries[0]
        console.print(
            f"{entry.kind} {subject_id} as entry {entry.seq} (tree size {sealed.tree_size})"
        )


@app.command("show")
@guarded
def show(
    subject_id: Annotated[str, typer.Argument(help="The platform's id for the person.")],
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """Show a subject's attributes, decisions and eligibility for every category × purpose.

    Example: consent-ledger subject show user-42 --json
    """
    with open_ledger() as ledger:
        view = ledger.subject_view(subject_id)
    if as_json:
        print_json(view.to_json())
        return
    console.print(
        styled(view.subject_id, "bold") + f"  ref {view.ref}  jurisdiction "
        f"{view.jurisdiction or '—'} ({view.regime})  minor {'yes' if view.minor else 'no'}  "
        f"registered at entry {view.registered_seq}",
    )
    decisions = Table(title="Decisions", title_justify="left")
    for column in ("seq", "category", "purpose", "decision", "explicit", "effective", "expires"):
        decisions.add_column(column)
    for row in view.decisions:
        decisions.add_row(
            str(row["seq"]),
            row["category"],
            row["purpose"],
            row["decision"],
            "yes" if row["explicit"] else "",
            row["effective"],
            row["expires"] or "",
        )
    console.print(decisions)
    matrix = Table(
        title=f"Eligibility at tree size {view.checked_at}, policy v{view.policy_version}",
        title_justify="left",
    )
    for column in ("category", "purpose", "eligible", "reason", "decided by"):
        matrix.add_column(column)
    for row in view.eligibility:
        matrix.add_row(
            row["category"],
            row["purpose"],
            styled("yes", "green") if row["eligible"] else styled("no", "red"),
            row["reason"],
            "" if row["decided_by"] is None else str(row["decided_by"]),
        )
    console.print(matrix)


@app.command("erase")
@guarded
def erase(
    subject_id: Annotated[str, typer.Argument(help="The platform's id for the person.")],
) -> None:
    """Erase a subject (GDPR Art. 17): unlink the id from the log for good.

    Example: consent-ledger subject erase user-42
    """
    with open_ledger() as ledger:
        sealed = ledger.erase_subject(subject_id, actor=cli_actor())
    console.print(
        f"subject.erased as entry {sealed.entries[0].seq}; {subject_id} is no longer linked "
        "to the log and every check for it answers `erased`"
    )
