"""The `consent-ledger` command: one Typer app composed from one sub-app per noun."""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path
from typing import Annotated

import orjson
import typer

from cli import clients, consent, datasets, demo, keys, policy, proof, report, subject
from cli.changes import changes_command
from cli.common import (
    JSON_OPTION,
    console,
    err_console,
    guarded,
    load_settings,
    open_ledger,
    print_json,
    progress_bar,
    styled,
)
from cli.importer import import_command
from ledger.errors import InvalidInput
from ledger.filtering import filter_dataset
from ledger.service import SCOPES, ConsentLedger, cli_actor
from ledger.tlog.evidence import EvidenceBundle, verify_bundle
from ledger.tlog.notes import Checkpoint, Note, VerifierKey

app = typer.Typer(
    name="consent-ledger",
    help="An append-only, signed ledger of consent decisions, with eligibility checks "
    "and proofs an auditor can verify offline.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(subject.app, name="subject")
app.add_typer(consent.app, name="consent")
app.add_typer(keys.app, name="keys")
app.add_typer(policy.app, name="policy")
app.add_typer(proof.app, name="proof")
app.add_typer(clients.app, name="clients")
app.add_typer(demo.app, name="demo")
app.add_typer(report.app, name="report")
app.add_typer(datasets.app, name="dataset")
app.command("verify-report")(report.verify_report_command)
app.command("import")(import_command)
app.command("changes")(changes_command)


def _version(value: bool) -> None:
    if value:
        console.print(f"consent-ledger {version('consent-ledger')}")
        raise typer.Exit()


@app.callback()
def root(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Settings come from CONSENT_LEDGER_* environment variables (see the README)."""


@app.command("init")
@guarded
def init(
    origin: Annotated[
        str | None,
        typer.Option(help="The log's name, e.g. example.com/consent (default: random)."),
    ] = None,
) -> None:
    """Create the ledger: home directory, signing key, schema, first entries, default policy.

    Refuses to overwrite an existing ledger or key.

    Example: CONSENT_LEDGER_HOME=/srv/ledger consent-ledger init --origin example.com/consent
    """
    settings = load_settings()
    ledger, sealed = ConsentLedger.initialize(settings, origin=origin, actor=cli_actor())
    try:
        _, admin_key = ledger.create_client("admin", list(SCOPES))
        console.print(f"ledger initialised in {settings.home.absolute()}")
        console.print(f"database: {ledger.database_url()}")
        console.print(f"tree size {sealed.tree_size}; verifier key:")
        console.print(ledger.verifier_key())
        console.print("admin API key (all scopes; shown once, store it now):")
        console.print(admin_key)
    finally:
        ledger.close()


@app.command("serve")
@guarded
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1)] = 1,
) -> None:
    """Serve the HTTP API (OpenAPI at /docs) with uvicorn.

    Example: consent-ledger serve --host 0.0.0.0 --port 8000 --workers 2
    """
    import uvicorn

    with open_ledger() as ledger:
        # Fail here, with one clear line, rather than in every worker.
        ledger.signing_key()
        ledger.upgrade()
    uvicorn.run(
        "api.app:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        access_log=False,
    )


@app.command("check")
@guarded
def check(
    subject_id: Annotated[str, typer.Argument(help="The platform's id for the person.")],
    category: Annotated[str, typer.Argument(help="Data category, e.g. content.public.")],
    purpose: Annotated[str | None, typer.Option("--purpose", "-p", help="Purpose.")] = None,
    as_of: Annotated[int | None, typer.Option(help="Evaluate at this tree size.")] = None,
    at: Annotated[str | None, typer.Option(help="Evaluate at this RFC 3339 time.")] = None,
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """May this subject's data of this category be used for this purpose?

    Example: consent-ledger check user-42 profile.employment --purpose ai-training
    """
    with open_ledger() as ledger:
        answer = ledger.check(subject_id, category, purpose, as_of=as_of, at=at)
    if as_json:
        print_json(answer.to_json())
        return
    verdict = styled("ELIGIBLE", "green") if answer.eligible else styled("NOT ELIGIBLE", "red")
    decided = "" if answer.decided_by is None else f", decided by entry {answer.decided_by}"
    console.print(
        verdict + f": {answer.reason}{decided} (policy v{answer.policy_version}, "
        f"tree size {answer.checked_at}, at {answer.at})",
    )


@app.command("filter")
@guarded
def filter_command(
    path: Annotated[
        Path, typer.Argument(help="Dataset: .csv, .jsonl or .parquet.", exists=True, dir_okay=False)
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Where the eligible records go (same format).")
    ],
    purpose: Annotated[str | None, typer.Option(help="Purpose (default ai-training).")] = None,
    subject_column: Annotated[str, typer.Option(help="Column holding the subject id.")] = (
        "subject_id"
    ),
    category_column: Annotated[
        str | None, typer.Option(help="Column holding each record's category.")
    ] = None,
    category: Annotated[
        str | None, typer.Option(help="One category for every record (instead of a column).")
    ] = None,
    as_of: Annotated[int | None, typer.Option(help="Evaluate at this tree size.")] = None,
    at: Annotated[str | None, typer.Option(help="Evaluate at this RFC 3339 time.")] = None,
    record: Annotated[
        str | None,
        typer.Option(
            metavar="NAME@VERSION",
            help="Also record the kept records as this dataset build (once per version).",
        ),
    ] = None,
    record_column: Annotated[
        str | None, typer.Option(help="Column holding each record's id (default record_id).")
    ] = None,
    receipt: Annotated[
        Path | None,
        typer.Option(
            help="Write the recorded build's receipt (evidence bundle) here.", dir_okay=False
        ),
    ] = None,
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """Keep the records of a dataset that their subjects allow; summarise the rest.

    Records are written unchanged, in order. Rerun with the printed --as-of and
    --at to reproduce the same output.

    With --record the same pass records the build: its members are the kept
    records (ids from --record-column; a category cell may be `a|b`), and OUT is
    written only if the build is recorded. `consent-ledger dataset` shows it.

    Example: consent-ledger filter posts.jsonl --out train.jsonl --category content.public

    Example: consent-ledger filter posts.csv --out train.csv --record posts-train@1
    """
    if category is not None and category_column is not None:
        raise InvalidInput("give --category or --category-column, not both", field="--category")
    if record is None and (record_column is not None or receipt is not None):
        option = "--record-column" if record_column is not None else "--receipt"
        raise InvalidInput("needs --record NAME@VERSION", field=option)
    column = None if category is not None else (category_column or "category")
    with open_ledger() as ledger, progress_bar() as progress:
        task = progress.add_task("filtering", total=None)
        summary = filter_dataset(
            ledger,
            path,
            out,
            purpose=purpose,
            subject_column=subject_column,
            category_column=column,
            category=category,
            as_of=as_of,
            at=at,
            progress=lambda rows: progress.update(task, completed=rows),
            record=record,
            record_column=record_column or "record_id",
            actor=cli_actor(),
            recording=lambda: progress.update(task, description=f"recording {record}"),
        )
    if receipt is not None and summary.build is not None:
        receipt.write_bytes(
            orjson.dumps(summary.build.receipt.to_json(), option=orjson.OPT_INDENT_2) + b"\n"
        )
    if as_json:
        print_json(summary.to_json())
        return
    console.print(
        f"kept {summary.kept} of {summary.rows} records "
        f"(tree size {summary.checked_at}, at {summary.at}, policy v{summary.policy_version})"
    )
    for reason, count in sorted(summary.dropped.items(), key=lambda item: -item[1]):
        console.print(f"  dropped {count}: {reason}")
    if summary.build is not None:
        build = summary.build.summary
        console.print(
            f"recorded {build.dataset}@{build.version} for {build.purpose} as entry {build.seq}: "
            f"{build.records} members, members_root {build.members_root}"
        )
        for error in summary.errors:
            console.print(f"  record {error.line}: {error.error}")
        if build.errors > len(summary.errors):
            console.print(f"  … and {build.errors - len(summary.errors)} more records with errors")
        if receipt is not None:
            console.print(f"receipt written to {receipt}")
    console.print(f"reproduce with: --as-of {summary.checked_at} --at {summary.at}")


@app.command("verify")
@guarded
def verify(
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option(
            "--checkpoint",
            help="A checkpoint saved earlier; proves no rollback or fork.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    key: Annotated[
        str | None, typer.Option(help="A verifier key you trust; it must be in the key chain.")
    ] = None,
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """Recompute and check everything: entries, tree, checkpoints, keys, subjects, state.

    Exits 1 and names the first bad entry, checkpoint or subject on any failure.

    Example: consent-ledger verify --checkpoint yesterday.checkpoint
    """
    notes = [path.read_text(encoding="utf-8") for path in checkpoint or []]
    trusted = VerifierKey.parse(key) if key else None
    with open_ledger() as ledger, progress_bar() as progress:
        task = progress.add_task("verifying", total=None)
        report = ledger.verify(
            external_checkpoints=notes,
            trusted_key=trusted,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    if as_json:
        print_json(report.to_json())
        return
    console.print(
        styled("OK", "green") + f": {report.entries} entries, {report.checkpoints} checkpoints, "
        f"{report.subjects} subjects verified; root {report.root}",
    )
    for size in report.external_checkpoints:
        console.print(f"consistent with saved checkpoint of size {size}")


@app.command("checkpoint")
@guarded
def checkpoint(as_json: Annotated[bool, JSON_OPTION] = False) -> None:
    """Print the latest signed checkpoint (save it to prove later that nothing was rewritten).

    Example: consent-ledger checkpoint > today.checkpoint
    """
    with open_ledger() as ledger:
        note = ledger.checkpoint()
    if as_json:
        body = Checkpoint.parse_body(Note.parse(note).text)
        print_json({"tree_size": body.size, "root": body.root, "note": note})
    else:
        sys.stdout.write(note)


@app.command("verify-bundle")
@guarded
def verify_bundle_command(
    path: Annotated[
        Path, typer.Argument(help="An evidence bundle (JSON).", exists=True, dir_okay=False)
    ],
    key: Annotated[list[str], typer.Option("--key", help="A trusted verifier key (repeatable).")],
    as_json: Annotated[bool, JSON_OPTION] = False,
) -> None:
    """Check an evidence bundle offline, with nothing but a verifier key.

    Example: consent-ledger verify-bundle evidence.json --key "$(cat ledger.vkey)"
    """
    try:
        document = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"not JSON: {exc}", field=str(path)) from None
    bundle = EvidenceBundle.from_json(document)
    checkpoint_body = verify_bundle(bundle, [VerifierKey.parse(text) for text in key])
    if as_json:
        print_json(
            {
                "ok": True,
                "tree_size": checkpoint_body.size,
                "root": checkpoint_body.root,
                "entries": [item.index for item in bundle.entries],
            }
        )
        return
    console.print(
        styled("OK", "green") + f": {len(bundle.entries)} entries proven against the checkpoint "
        f"of size {checkpoint_body.size} signed by {checkpoint_body.origin}",
    )


def run() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise SystemExit(130) from None
