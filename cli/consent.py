"""`consent-ledger consent …`: record decisions and show a subject's evidence."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cli.common import JSON_OPTION, console, guarded, open_ledger, print_json
from ledger.consent.decisions import DEFAULT_PURPOSE, DecisionRequest
from ledger.service import cli_actor

app = typer.Typer(help="Record consent decisions and show a subject's evidence.")

Purpose = Annotated[
    str, typer.Option("--purpose", "-p", help="Purpose, e.g. ai-training.generative, or *.")
]
Explicit = Annotated[
    bool, typer.Option("--explicit", help="Explicit consent (needed for special categories).")
]
Expires = Annotated[str | None, typer.Option(help="RFC 3339 time the decision lapses.")]
Effective = Annotated[str | None, typer.Option(help="RFC 3339 time it takes effect (now).")]
Notice = Annotated[str | None, typer.Option(help="Version of the notice shown to the person.")]
Method = Annotated[str, typer.Option(help="How the decision was collected.")]
SubjectArg = Annotated[str, typer.Argument(help="The platform's id for the person.")]
CategoryArg = Annotated[str, typer.Argument(help="Data category, e.g. content.public, or *.")]


def _record(
    decision: str,
    subject_id: str,
    category: str,
    purpose: str,
    explicit: bool,
    expires: str | None,
    effective: str | None,
    notice: str | None,
    method: str,
) -> None:
    request = DecisionRequest(
        category=category,
        decision=decision,
        purpose=purpose,
        explicit=explicit,
        method=method,
        notice=notice,
        effective=effective,
        expires=expires,
    )
    with open_ledger() as ledger:
        sealed = ledger.record_consents(subject_id, [request], actor=cli_actor())
    entry = sealed.entries[0]
    console.print(
        f"{decision} {category} for {purpose} as entry {entry.seq} (tree size {sealed.tree_size})"
    )


def _decision_command(name: str, decision: str, summary: str, example: str) -> None:
    """Register `consent NAME`: grant, deny and withdraw take the same arguments."""

    def command(
        subject_id: SubjectArg,
        category: CategoryArg,
        purpose: Purpose = DEFAULT_PURPOSE,
        explicit: Explicit = False,
        expires: Expires = None,
        effective: Effective = None,
        notice: Notice = None,
        method: Method = "cli",
    ) -> None:
        _record(
            decision, subject_id, category, purpose, explicit, expires, effective, notice, method
        )

    command.__name__ = name
    command.__doc__ = f"{summary}\n\nExample: {example}"
    app.command(name)(guarded(command))


_decision_command(
    "grant",
    "granted",
    "Record that the subject permits a use of a data category.",
    "consent-ledger consent grant user-42 biometric.face --explicit --notice v3",
)
_decision_command(
    "deny",
    "denied",
    "Record that the subject refuses a use of a data category.",
    "consent-ledger consent deny user-42 '*' --purpose ai-training",
)
_decision_command(
    "withdraw",
    "withdrawn",
    "Record that the subject withdraws an earlier consent.",
    "consent-ledger consent withdraw user-42 content.public",
)


@app.command("history")
@guarded
def history(subject_id: SubjectArg, as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """Every entry about a subject, as an evidence bundle (verifiable offline).

    Example: consent-ledger consent history user-42 --json > evidence.json
    """
    with open_ledger() as ledger:
        bundle = ledger.subject_history(subject_id)
    if as_json:
        print_json(bundle.to_json())
        return
    table = Table(title=f"History of {subject_id}", title_justify="left")
    for column in ("seq", "time", "kind", "details"):
        table.add_column(column)
    for item in bundle.entries:
        body = item.entry
        details = {k: v for k, v in body["data"].items() if k not in ("subject", "commitment")}
        table.add_row(
            str(item.index),
            body["time"],
            body["kind"],
            ", ".join(f"{k}={v}" for k, v in details.items() if v is not None),
        )
    console.print(table)
    console.print(
        f"proven against: {bundle.checkpoint.splitlines()[1]} entries; "
        "use --json for the evidence bundle"
    )
