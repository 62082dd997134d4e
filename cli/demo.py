"""`consent-ledger demo seed`: a realistic synthetic population for demos and benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import JSON_OPTION, console, guarded, open_ledger, print_json, progress_bar
from ledger.demo import seed_demo
from ledger.service import cli_actor

app = typer.Typer(help="Demo data.")


@app.command("seed")
@guarded
def seed(
    subjects: Annotated[int, typer.Option(help="About how many subjects.", min=1)] = 1000,
    seed_value: Annotated[
        int, typer.Option("--seed", help="Random seed (same seed, same data).")
    ] = (20_261_126),
    posts: Annotated[
        Path,
        typer.Option(help="Where to write the platform's posts (50 per subject), as CSV."),
    ] = Path("posts.csv"),
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """Seed a synthetic population: jurisdictions in a plausible mix, minors, grants,
    refusals and withdrawals over time, explicit biometric grants; write its posts
    (`posts.csv`, with a `record_id` column); record two training datasets
    (posts-train@1, profiles-train@1); then later withdrawals, refusals, a minor, an
    erasure and a policy change (public posts default-allowed as AI model input
    outside the GDPR, education history no longer), which open purge obligations.

    Example: consent-ledger demo seed --subjects 10000
    """
    with open_ledger() as ledger, progress_bar() as progress:
        task = progress.add_task("seeding", total=None)
        summary = seed_demo(
            ledger,
            subjects=subjects,
            seed=seed_value,
            posts=posts,
            actor=cli_actor(),
            progress=lambda stage, done: progress.update(task, description=stage, completed=done),
        )
    if as_json:
        print_json(summary.to_json())
        return
    if summary.already_seeded:
        console.print(f"this population is already seeded (tree size {summary.tree_size})")
        console.print(f"wrote {summary.posts} posts to {posts}")
        return
    policy = (
        f"policy v{summary.policy_version} published as entry {summary.policy_entry}"
        if summary.policy_entry is not None
        else "no policy change"
    )
    console.print(
        f"seeded {summary.rows} rows as {summary.entries} entries; {policy}; "
        f"tree size {summary.tree_size}"
    )
    console.print(f"wrote {summary.posts} posts to {posts}")
    for build in summary.builds:
        console.print(
            f"recorded {build['dataset']}@{build['version']} as entry {build['seq']}: "
            f"{build['records']} of {build['checked']} records eligible"
        )
    if summary.erased:
        console.print(f"erased {summary.erased}")
    for dataset, count in sorted(summary.obligations.items()):
        console.print(f"{dataset}: {count} open purge obligations")
