"""`consent-ledger keys …`: show and rotate the signing key."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import JSON_OPTION, console, guarded, open_ledger, print_json
from ledger.service import cli_actor

app = typer.Typer(help="Show the verifier key; rotate the signing key.")


@app.command("show")
@guarded
def show(as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """Print the verifier key that checks this ledger's current checkpoints.

    Example: consent-ledger keys show > ledger.vkey
    """
    with open_ledger() as ledger:
        key = ledger.verifier_key()
    if as_json:
        print_json({"verifier_key": key})
    else:
        console.print(key)


@app.command("rotate")
@guarded
def rotate() -> None:
    """Replace the signing key; the checkpoint announcing the new key is signed by both.

    Example: consent-ledger keys rotate
    """
    with open_ledger() as ledger:
        ledger.signing_key()
        sealed = ledger.rotate_key(actor=cli_actor())
        key = ledger.verifier_key()
    console.print(f"new verifier key (announced in entry {sealed.entries[0].seq}):")
    console.print(key)
