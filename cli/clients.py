"""`consent-ledger clients …`: API keys with scopes."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cli.common import JSON_OPTION, console, guarded, open_ledger, print_json
from ledger.service import SCOPES

app = typer.Typer(help="Create, list and revoke API clients (keys with scopes).")


@app.command("create")
@guarded
def create(
    name: Annotated[str, typer.Argument(help="The client's name, e.g. ml-platform.")],
    scope: Annotated[
        list[str], typer.Option("--scope", "-s", help=f"Repeatable: {', '.join(SCOPES)}.")
    ],
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """Create a client and print its API key — once; only a hash is stored.

    Example: consent-ledger clients create ml-platform --scope check --scope read
    """
    with open_ledger() as ledger:
        client, key = ledger.create_client(name, scope)
    if as_json:
        print_json({**client.to_json(), "key": key})
        return
    console.print(f"client {client.name} with scopes {', '.join(sorted(client.scopes))}")
    console.print("API key (shown once, store it now):")
    console.print(key)


@app.command("list")
@guarded
def list_command(as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """List clients and their scopes (never their keys).

    Example: consent-ledger clients list --json
    """
    with open_ledger() as ledger:
        clients = ledger.list_clients()
    if as_json:
        print_json([client.to_json() for client in clients])
        return
    table = Table()
    for column in ("name", "scopes", "created", "revoked"):
        table.add_column(column)
    for client in clients:
        table.add_row(
            client.name, ", ".join(sorted(client.scopes)), client.created, client.revoked or ""
        )
    console.print(table)


@app.command("revoke")
@guarded
def revoke(name: Annotated[str, typer.Argument(help="The client to revoke.")]) -> None:
    """Revoke a client's key; requests with it fail with 401 from now on.

    Example: consent-ledger clients revoke ml-platform
    """
    with open_ledger() as ledger:
        ledger.revoke_client(name)
    console.print(f"client {name} revoked")
