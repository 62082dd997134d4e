"""`consent-ledger webhooks …`: endpoints that are sent the change feed, signed (SPEC §8)."""

from __future__ import annotations

import logging
import signal
from typing import Annotated

import anyio
import typer
from rich.table import Table

from cli.common import JSON_OPTION, console, err_console, guarded, open_ledger, print_json, styled
from ledger.service import ConsentLedger

app = typer.Typer(
    help="Webhook endpoints: the change feed delivered in order, batched, signed per the "
    "Standard Webhooks specification, at least once."
)

SECRET_NOTE = (
    "signing secret (configure the receiver with it; `webhooks secret NAME` shows it again):"
)


@app.command("add")
@guarded
def add(
    name: Annotated[str, typer.Argument(help="The endpoint's name, e.g. feature-store.")],
    url: Annotated[str, typer.Argument(help="Where deliveries are POSTed (http or https).")],
    events: Annotated[
        list[str] | None,
        typer.Option(
            "--events",
            "-e",
            metavar="KIND",
            help="Repeatable: an entry kind to deliver, e.g. consent.recorded "
            "(default: every kind).",
        ),
    ] = None,
    after: Annotated[
        int | None,
        typer.Option(help="Deliver the events from this tree size on (default: from now; 0: all)."),
    ] = None,
    secret_only: Annotated[
        bool, typer.Option("--secret", help="Print only the signing secret (for scripts).")
    ] = False,
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """Add an endpoint and print its signing secret.

    Example: consent-ledger webhooks add feature-store https://ml.example/hooks/consent
    --events consent.recorded --events subject.erased
    """
    with open_ledger() as ledger:
        endpoint, secret = ledger.add_webhook(name, url, events or [], after=after)
    if secret_only:
        console.print(secret)
        return
    if as_json:
        print_json({**endpoint.to_json(), "secret": secret})
        return
    kinds = ", ".join(sorted(endpoint.kinds)) or "every kind"
    console.print(
        f"webhook {endpoint.name} → {endpoint.url} ({kinds}), "
        f"delivering from tree size {endpoint.cursor}"
    )
    console.print(SECRET_NOTE)
    console.print(secret)


@app.command("secret")
@guarded
def secret(name: Annotated[str, typer.Argument(help="The endpoint.")]) -> None:
    """Print an endpoint's signing secret (derived from HOME; never stored in the database).

    Example: consent-ledger webhooks secret feature-store
    """
    with open_ledger() as ledger:
        console.print(ledger.webhook_secret(name))


@app.command("list")
@guarded
def list_command(as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """List endpoints: the events they want, how far they are (cursor, lag) and any error.

    Example: consent-ledger webhooks list --json
    """
    with open_ledger() as ledger:
        endpoints = ledger.webhooks()
    if as_json:
        print_json([endpoint.to_json() for endpoint in endpoints])
        return
    table = Table()
    for column in ("name", "url", "events", "cursor", "lag", "last error", "next attempt"):
        # Folded, not cut short with an ellipsis: a URL or a kind must read in full.
        table.add_column(column, overflow="fold")
    for endpoint in endpoints:
        batch = endpoint.batch
        table.add_row(
            endpoint.name,
            endpoint.url,
            ", ".join(sorted(endpoint.kinds)) or "all",
            str(endpoint.cursor),
            str(endpoint.lag),
            (batch.last_error or "") if batch else "",
            (batch.next_attempt or "") if batch else "",
        )
    console.print(table)


@app.command("remove")
@guarded
def remove(name: Annotated[str, typer.Argument(help="The endpoint to remove.")]) -> None:
    """Remove an endpoint: nothing more is delivered to it.

    Example: consent-ledger webhooks remove feature-store
    """
    with open_ledger() as ledger:
        ledger.remove_webhook(name)
    console.print(f"webhook {name} removed")


@app.command("test")
@guarded
def send_test_delivery(
    name: Annotated[str, typer.Argument(help="The endpoint.")],
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """Send one signed `consent-ledger.test` delivery now and report what came back.

    Exits 1 unless the endpoint answers 2xx. Moves no cursor.

    Example: consent-ledger webhooks test feature-store
    """
    with open_ledger() as ledger:
        result = ledger.test_webhook(name)
    if as_json:
        print_json(result.to_json())
    elif result.ok:
        console.print(
            styled("OK", "green") + f": {result.url} answered HTTP {result.status} "
            f"in {result.seconds:.2f} s (webhook-id {result.webhook_id})"
        )
    else:
        err_console.print(styled("FAILED", "red"), f"{result.url}: {result.error}")
    if not result.ok:
        raise typer.Exit(1)


async def _deliver_until_signalled(ledger: ConsentLedger) -> None:
    async with anyio.create_task_group() as group:
        group.start_soon(ledger.deliver_webhooks)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                group.cancel_scope.cancel()
                break


@app.command("run")
@guarded
def run() -> None:
    """Deliver webhooks in the foreground until Ctrl-C (or SIGTERM).

    One deliverer runs at a time for the database: this process delivers while it
    holds the webhook lease, which `serve` processes contend for too unless
    CONSENT_LEDGER_WEBHOOK_DELIVERY=false.

    Example: CONSENT_LEDGER_WEBHOOK_DELIVERY=false consent-ledger webhooks run
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with open_ledger() as ledger:
        ledger.signing_key()  # HOME must be the ledger's: the secrets are derived from it
        err_console.print("delivering webhooks while this process holds the lease; Ctrl-C stops")
        anyio.run(_deliver_until_signalled, ledger)
    err_console.print("stopped")
