"""`consent-ledger demo seed`: a realistic synthetic population for demos and benchmarks."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from cli.common import JSON_OPTION, console, guarded, open_ledger, print_json, progress_bar
from ledger.demo import demo_policy_change, generate_rows
from ledger.importing import FIELDS
from ledger.service import cli_actor

app = typer.Typer(help="Demo data.")

# The generator gives 1-6 rows per subject, 3.2 on average.
ROWS_PER_SUBJECT = 3.2


@app.command("seed")
@guarded
def seed(
    subjects: Annotated[int, typer.Option(help="About how many subjects.", min=1)] = 1000,
    seed_value: Annotated[
        int, typer.Option("--seed", help="Random seed (same seed, same data).")
    ] = (20_261_126),
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """Seed a synthetic population: jurisdictions in a plausible mix, minors, grants,
    refusals and withdrawals over time, explicit biometric grants, and a policy change
    half-way (public posts become default-allowed as AI model input outside the GDPR).

    Example: consent-ledger demo seed --subjects 10000
    """
    rows = generate_rows(max(1, round(subjects * ROWS_PER_SUBJECT)), seed=seed_value)
    half = max(1, round(subjects * ROWS_PER_SUBJECT / 2))
    with tempfile.TemporaryDirectory(prefix="consent-ledger-demo-") as scratch:
        first, second = Path(scratch) / "before.csv", Path(scratch) / "after.csv"
        for path, count in ((first, half), (second, None)):
            with path.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(FIELDS)
                for written, row in enumerate(rows):
                    writer.writerow([row[name] for name in FIELDS])
                    if count is not None and written + 1 >= count:
                        break
        with open_ledger() as ledger, progress_bar() as progress:
            task = progress.add_task("seeding", total=None)
            before = ledger.import_file(
                first, actor=cli_actor(), progress=lambda n: progress.update(task, completed=n)
            )
            changed = demo_policy_change(ledger.current_policy())
            published = None
            if not before.already_imported:
                published = ledger.publish_policy(changed, actor=cli_actor())
            after = ledger.import_file(
                second,
                actor=cli_actor(),
                progress=lambda n: progress.update(task, completed=before.rows + n),
            )
            size = ledger.tree_size()
    summary = {
        "rows": before.rows + after.rows,
        "entries": before.entries + after.entries,
        "policy_version": changed.version if published else None,
        "policy_entry": published.entries[0].seq if published else None,
        "already_seeded": before.already_imported and after.already_imported,
        "tree_size": size,
    }
    if as_json:
        print_json(summary)
        return
    if summary["already_seeded"]:
        console.print(f"this population is already seeded (tree size {size})")
        return
    console.print(
        f"seeded {summary['rows']} rows as {summary['entries']} entries; policy "
        f"v{changed.version} published as entry {summary['policy_entry']}; tree size {size}"
    )
