"""`consent-ledger proof …`: RFC 9162 inclusion and consistency proofs."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import JSON_OPTION, console, guarded, open_ledger, print_json
from ledger.tlog.notes import b64

app = typer.Typer(help="Print RFC 9162 inclusion and consistency proofs.")


@app.command("inclusion")
@guarded
def inclusion(
    index: Annotated[int, typer.Argument(help="The entry's seq.")],
    tree_size: Annotated[
        int | None, typer.Option(help="Tree size to prove against (default: latest).")
    ] = None,
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """Prove that an entry is in the tree of a given size.

    Example: consent-ledger proof inclusion 41 --tree-size 100 --json
    """
    with open_ledger() as ledger:
        proof = ledger.inclusion_proof(index, tree_size)
    if as_json:
        print_json(proof)
        return
    console.print(f"index {proof['index']} in tree size {proof['tree_size']}")
    console.print(f"leaf hash {b64(proof['leaf_hash'])}")
    for node in proof["hashes"]:
        console.print(b64(node))


@app.command("consistency")
@guarded
def consistency(
    old_size: Annotated[int, typer.Argument(help="The earlier tree size.")],
    new_size: Annotated[int, typer.Argument(help="The later tree size.")],
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """Prove that the tree of OLD entries is a prefix of the tree of NEW entries.

    Example: consent-ledger proof consistency 10 100 --json
    """
    with open_ledger() as ledger:
        proof = ledger.consistency_proof(old_size, new_size)
    if as_json:
        print_json(proof)
        return
    console.print(f"tree size {old_size} → {new_size}")
    for node in proof["hashes"]:
        console.print(b64(node))
