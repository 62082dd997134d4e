"""`consent-ledger changes`: the change feed (SPEC §8) in a terminal, or as NDJSON for a pipe."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import orjson
import typer
from rich.text import Text

from cli.common import console, guarded, open_ledger, styled

# Entries read per page, and how long one wait for new entries lasts before looking again.
PAGE = 1000
FOLLOW_WAIT = 1.0


@guarded
def changes_command(
    after: Annotated[
        int, typer.Option("--after", min=0, help="Start after this cursor (a tree size).")
    ] = 0,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Keep printing new events as they are committed."),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="One JSON event per line (NDJSON), as GET /v1/changes."),
    ] = False,
) -> None:
    """What changed, entry by entry: who, what, and which answers it turned.

    Example: consent-ledger changes --after 4100 --follow
    """
    with open_ledger() as ledger:
        cursor = after
        try:
            while True:
                page = ledger.changes(cursor, PAGE)
                for event in page.events:
                    if as_json:
                        sys.stdout.buffer.write(orjson.dumps(event) + b"\n")
                    else:
                        console.print(describe(event))
                sys.stdout.flush()
                cursor = page.next
                if page.next < page.tree_size:
                    continue
                if not follow:
                    break
                ledger.wait_beyond_sync(cursor, FOLLOW_WAIT)
        except KeyboardInterrupt:
            pass  # Ctrl-C ends a follow: nothing half-printed, nothing to undo
    if not as_json:
        console.print(styled(f"next cursor: {cursor}", "dim"))


def describe(event: dict[str, Any]) -> Text:
    """One event as one line: seq, time, kind, who, what, and what it turned."""
    who = event["subject_id"]
    if who is None and event["subject"] is not None:
        who = f"(erased; ref {event['subject']})"
    line = Text()
    line.append(f"{event['seq']:>7}  ", style="dim")
    line.append(event["time"][:19] + "Z  ", style="dim")
    line.append(f"{event['kind']:<18}", style="bold")
    if who is not None:
        line.append(f" {who}")
    what = _what(event)
    if what:
        line.append(f"  {what}")
    turned = [item for item in event["effect"] if "eligible" in item]
    for eligible, style in ((True, "green"), (False, "red")):
        pairs = [item for item in turned if item["eligible"] is eligible]
        if pairs:
            label = "eligible" if eligible else "not eligible"
            reasons = sorted({item["reason"] for item in pairs})
            names = ", ".join(f"{item['category']}×{item['purpose']}" for item in pairs)
            line.append(f"  → {label} ({'/'.join(reasons)}): {names}", style=style)
    if event["kind"] == "policy.published" and event["effect"]:
        line.append(f"  → rules changed for {len(event['effect'])} pairs", style="yellow")
    for opened in event["obligations"]:
        line.append(
            f"  → purge {opened['records']} from {opened['dataset']}@{opened['version']}",
            style="yellow",
        )
    return line


def _what(event: dict[str, Any]) -> str:
    kind = event["kind"]
    if kind == "consent.recorded":
        explicit = " (explicit)" if event.get("explicit") else ""
        return f"{event['decision']} {event['category']} for {event['purpose']}{explicit}"
    if kind == "subject.registered":
        minor = ", minor" if event.get("minor") else ""
        return f"in {event.get('jurisdiction') or 'no jurisdiction'}{minor}"
    if kind == "subject.updated":
        changes = {key: event[key] for key in ("jurisdiction", "minor") if key in event}
        return ", ".join(f"{key} {value}" for key, value in changes.items())
    if kind == "policy.published":
        return f"version {event['version']}"
    if kind == "dataset.recorded":
        return f"{event['dataset']}@{event['version']}: {event['records']} records"
    if kind == "dataset.purged":
        return f"{event['dataset']}@{event['version']}: {event['records']} records purged"
    if kind == "dataset.retired":
        return f"{event['dataset']}@{event['version']}"
    if kind in ("ledger.initialized", "key.added", "key.retired"):
        return str(event.get("verifier_key", ""))
    return ""
