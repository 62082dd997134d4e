"""`consent-ledger policy …`: show, validate and publish policies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.common import JSON_OPTION, console, guarded, open_ledger, print_json, styled
from ledger.consent.policy import Policy
from ledger.errors import InvalidInput
from ledger.service import cli_actor

app = typer.Typer(help="Show, validate and publish the consent policy (TOML).")

FileArg = Annotated[Path, typer.Argument(help="A policy TOML file.")]


def _load(path: Path) -> Policy:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"no such file {path}", field="FILE") from None
    return Policy.from_toml(text)


@app.command("show")
@guarded
def show(as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """Show the policy in force.

    Example: consent-ledger policy show --json
    """
    with open_ledger() as ledger:
        policy = ledger.current_policy()
    document = policy.to_document()
    if as_json:
        print_json(document)
        return
    console.print(styled(f"policy version {policy.version}", "bold"))
    table = Table(title="Categories", title_justify="left")
    table.add_column("category")
    table.add_column("special")
    table.add_column("description")
    for name in policy.categories:
        description = document["categories"][name].get("description", "")
        table.add_row(name, "yes" if policy.is_special(name) else "", description)
    console.print(table)
    console.print("purposes: " + ", ".join(policy.purposes))
    console.print(
        "prohibited: "
        + ", ".join(f"{r['category']} × {r['purpose']}" for r in document["prohibited"])
    )
    console.print(f"minors eligible: {'yes' if policy.minors_eligible else 'no'}")
    for regime, rules in document["defaults"].items():
        for purpose, categories in rules.items():
            for category, value in categories.items():
                console.print(f"default {regime}: {purpose} × {category} → {value}")


@app.command("validate")
@guarded
def validate(path: FileArg) -> None:
    """Check a policy file without publishing it.

    Example: consent-ledger policy validate policy.toml
    """
    policy = _load(path)
    console.print(
        f"policy version {policy.version} is valid: {len(policy.categories)} categories, "
        f"{len(policy.purposes)} purposes"
    )


@app.command("publish")
@guarded
def publish(path: FileArg) -> None:
    """Publish a policy: it governs every check from the next entry on.

    Example: consent-ledger policy publish policy.toml
    """
    policy = _load(path)
    with open_ledger() as ledger:
        sealed = ledger.publish_policy(policy, actor=cli_actor())
    console.print(f"policy version {policy.version} published as entry {sealed.entries[0].seq}")
