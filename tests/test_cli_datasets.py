"""Datasets on the command line (SPEC §7): `filter --record` and `consent-ledger dataset …`,
on SQLite and on PostgreSQL.

Like the other CLI tests, every test drives the real Typer app in-process through
`CliRunner` with settings from the environment, as a user's shell would give them,
and checks what the commands print and write and their exit codes (0 success,
1 failure, 2 usage error). Proofs and receipts are checked with the independent
verifier (tests/e2e/independent.py), with nothing but the verifier key.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

from cli import datasets as dataset_commands
from cli.main import app
from tests.cli_harness import (
    FAILURE,
    OK,
    USAGE,
    Home,
    cli_environment,
    describe,
    invoke,
    invoke_json,
    runner,
    tree_size,
)
from tests.e2e.independent import independent_verify, jcs, leaf_hash, verify_inclusion

ORIGIN = "test.example/datasets"
# Four US subjects (default-allow for ai-training), one in Germany (default-deny), a minor.
ALLOWED = ("u1", "u2", "u3", "u4")
SUBJECTS = (*ALLOWED, "d1", "kid")


@dataclass
class Ledger:
    """An initialised ledger with its population, as the CLI sees it."""

    home: Home
    verifier_key: str
    posts: Path
    kept: list[str]  # the record ids a build of `posts` keeps, in file order

    @property
    def files(self) -> Path:
        return self.home.tmp_path / "files"


def run(*args: str, code: int = OK, stdin: str | None = None) -> Result:
    """`invoke`, with something on stdin."""
    result = runner.invoke(app, list(args), input=stdin, env={"COLUMNS": "400"})
    assert result.exit_code == code, f"`{' '.join(args)}` -> {result.exit_code}\n" + describe(
        result
    )
    return result


def entry_seq(result: Result) -> int:
    match = re.search(r"as entry (\d+)", result.stdout)
    assert match, result.output
    return int(match.group(1))


def csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def post_rows() -> list[list[str]]:
    """Three posts per subject: public, profile, and a public photo showing a face."""
    rows = [["record_id", "subject_id", "category", "text"]]
    for subject in SUBJECTS:
        rows.append([f"{subject}-a", subject, "content.public", f"{subject} says hi, twice"])
        rows.append([f"{subject}-b", subject, "profile", "a profile"])
        rows.append([f"{subject}-c", subject, "content.public|biometric.face", "a selfie"])
    return rows


@pytest.fixture
def ledger(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    home = cli_environment(tmp_path, database_url, monkeypatch)
    lines = invoke("init", "--origin", ORIGIN).stdout.splitlines()
    verifier_key = lines[next(i for i, s in enumerate(lines) if s.endswith("verifier key:")) + 1]
    for subject in ALLOWED:
        invoke("subject", "register", subject, "--jurisdiction", "US")
    invoke("subject", "register", "d1", "--jurisdiction", "DE")
    invoke("subject", "register", "kid", "--jurisdiction", "US", "--minor")
    (tmp_path / "files").mkdir()
    posts = home.write("files/posts.csv", csv_text(post_rows()))
    # Only the adults in the US, and never the face (it needs explicit consent).
    kept = [f"{subject}-{post}" for subject in ALLOWED for post in "ab"]
    return Ledger(home, verifier_key.strip(), posts, kept)


def record(ledger: Ledger, build: str = "posts-train@1", *options: str) -> dict[str, Any]:
    out = ledger.files / "kept.csv"
    return invoke_json("filter", str(ledger.posts), "--out", str(out), "--record", build, *options)


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def leftovers(ledger: Ledger) -> list[str]:
    """The files beside the dataset other than it and a first build's output."""
    return sorted(p.name for p in ledger.files.iterdir() if p.name not in ("posts.csv", "kept.csv"))


# --- filter --record -----------------------------------------------------------------------


def test_filter_record_writes_the_kept_rows_and_records_them(ledger: Ledger) -> None:
    out = ledger.files / "kept.csv"
    receipt = ledger.files / "receipt.json"
    result = invoke(
        "filter", str(ledger.posts), "--out", str(out),
        "--record", "posts-train@1", "--receipt", str(receipt),
    )  # fmt: skip

    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["record_id"] for row in rows] == ledger.kept
    assert rows[0]["text"] == "u1 says hi, twice"  # written unchanged
    assert f"kept 8 of {len(SUBJECTS) * 3} records" in result.stdout
    for line in (
        "dropped 4: explicit-consent-required",
        "dropped 3: default-deny",
        "dropped 3: minor",
    ):
        assert line in result.stdout, result.output
    seq = entry_seq(result)
    assert seq == tree_size() - 1
    assert f"recorded posts-train@1 for ai-training as entry {seq}: 8 members" in result.stdout
    assert f"receipt written to {receipt}" in result.stdout
    # The receipt proves the dataset.recorded entry offline, with the verifier key alone.
    bundle = json.loads(receipt.read_text())
    independent_verify(bundle, ledger.verifier_key)
    entry = bundle["entries"][0]["entry"]
    assert (entry["seq"], entry["kind"]) == (seq, "dataset.recorded")
    assert entry["data"]["records"] == 8
    assert "OK" in invoke("verify-bundle", str(receipt), "--key", ledger.verifier_key).stdout


def test_filter_record_json_has_the_build_and_its_receipt(ledger: Ledger) -> None:
    summary = record(ledger)

    assert {"rows", "kept", "dropped", "checked_at", "at", "build", "receipt", "errors"} <= set(
        summary
    )
    build = summary["build"]
    assert (build["dataset"], build["version"], build["purpose"]) == (
        "posts-train",
        "1",
        "ai-training",
    )
    assert (build["records"], build["lines"], build["errors"]) == (8, 18, 0)
    assert build["dropped"] == summary["dropped"]
    assert (build["checked_at"], build["at"]) == (summary["checked_at"], summary["at"])
    assert summary["errors"] == []
    _, root = independent_verify(summary["receipt"], ledger.verifier_key)
    assert (
        summary["receipt"]["entries"][0]["entry"]["data"]["members_root"] == (build["members_root"])
    )
    assert root


def test_filter_record_with_another_record_column_and_purpose(ledger: Ledger) -> None:
    rows = [["id" if cell == "record_id" else cell for cell in post_rows()[0]], *post_rows()[1:]]
    source = ledger.home.write("files/renamed.csv", csv_text(rows))
    summary = invoke_json(
        "filter", str(source), "--out", str(ledger.files / "kept.csv"),
        "--record", "posts-mining@2024.1", "--record-column", "id", "--purpose", "data-mining",
    )  # fmt: skip
    assert (summary["build"]["purpose"], summary["build"]["version"]) == ("data-mining", "2024.1")
    shown = invoke_json("dataset", "show", "posts-mining@2024.1")["build"]
    assert (shown["purpose"], shown["records"]) == ("data-mining", summary["kept"])


def test_a_row_without_a_record_id_is_counted_and_shown(ledger: Ledger) -> None:
    rows = [*post_rows(), ["", "u1", "content.public", "no id"]]
    source = ledger.home.write("files/holes.csv", csv_text(rows))
    out = ledger.files / "kept.csv"
    result = invoke("filter", str(source), "--out", str(out), "--record", "posts-train@1")

    assert "dropped 1: invalid record_id" in result.stdout, result.output
    assert "record 19: record_id: is required" in result.stdout, result.output
    assert re.search(r"as entry \d+: 8 members", result.stdout), result.output
    summary = invoke_json("dataset", "show", "posts-train@1")["build"]
    assert summary["records"] == 8


def test_a_version_recorded_twice_fails_and_leaves_no_output(ledger: Ledger) -> None:
    record(ledger)
    size = tree_size()
    again = ledger.files / "again.csv"

    result = invoke(
        "filter", str(ledger.posts), "--out", str(again), "--record", "posts-train@1",
        code=FAILURE,
    )  # fmt: skip

    assert "posts-train@1 is recorded already" in result.output
    assert not again.exists()
    assert leftovers(ledger) == []
    assert tree_size() == size


def test_duplicated_record_ids_fail_naming_them_and_record_nothing(ledger: Ledger) -> None:
    rows = post_rows()
    rows += [["u1-a", "u2", "profile", "again"], ["u3-b", "u3", "profile", "again"]]
    source = ledger.home.write("files/twice.csv", csv_text(rows))
    out = ledger.files / "twice-kept.csv"
    size = tree_size()

    result = invoke("filter", str(source), "--out", str(out), "--record", "posts-train@1", code=1)

    assert "record ids occur more than once: 'u1-a', 'u3-b'" in result.output
    assert "posts-train@1 was not recorded and twice-kept.csv not written" in result.output
    assert not out.exists()
    assert leftovers(ledger) == ["twice.csv"]
    assert tree_size() == size
    assert "no build posts-train@1" in invoke("dataset", "show", "posts-train@1", code=1).output


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--record", "posts-train@1", "--record-column", "post_id"], "it has record_id, subject"),
        (["--record", "Posts@1"], "--record: must be 1 to 128 characters"),
        (["--record", "posts-train"], "expected NAME@VERSION"),
        (["--record-column", "record_id"], "--record-column: needs --record"),
        (["--receipt", "r.json"], "--receipt: needs --record"),
    ],
)
def test_filter_record_usage_errors(ledger: Ledger, options: list[str], message: str) -> None:
    out = ledger.files / "out.csv"
    result = invoke("filter", str(ledger.posts), "--out", str(out), *options, code=USAGE)
    assert message in result.output
    assert not out.exists()
    assert leftovers(ledger) == []


def test_filter_without_record_prints_and_writes_as_before(ledger: Ledger) -> None:
    out = ledger.files / "kept.csv"
    summary = invoke_json("filter", str(ledger.posts), "--out", str(out))
    assert set(summary) == {"rows", "kept", "dropped", "checked_at", "at", "policy_version"}
    with out.open(newline="") as handle:
        assert [row["record_id"] for row in csv.DictReader(handle)] == ledger.kept
    # A `a|b` cell means several categories only in a build: here it is not a category.
    assert summary["dropped"]["invalid category"] == len(SUBJECTS)
    assert "no dataset builds" in invoke("dataset", "list").stdout


# --- the whole story: build, withdrawals, obligations, purge, retire ----------------------


def obligation_rows(name: str, *options: str) -> dict[str, list[dict[str, Any]]]:
    """The same listing as a table, CSV and JSON, each parsed into the same rows."""
    table = invoke("dataset", "obligations", name, *options).stdout.splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("record_id"))
    shown = []
    for line in table[header + 1 :]:
        if re.match(r"\d+ obligations?:", line):
            break
        cells = re.split(r"\s{2,}", line.strip())
        shown.append(
            {"record_id": cells[0], "reason": cells[2], "cause": int(cells[3]), "status": cells[6]}
        )
    as_csv = read_csv(invoke("dataset", "obligations", name, *options, "--format", "csv").stdout)
    as_json = invoke_json("dataset", "obligations", name, *options)["obligations"]
    return {"table": shown, "csv": as_csv, "json": as_json}


def test_withdrawals_and_an_erasure_open_obligations_that_a_purge_fulfils(ledger: Ledger) -> None:
    built = record(ledger)
    seq = built["build"]["seq"]
    assert "no obligations of posts-train" in invoke("dataset", "obligations", "posts-train").stdout

    # Three subjects withdraw (everything, the public posts, the profile); one is erased.
    everything = entry_seq(invoke("consent", "withdraw", "u1", "*"))
    public = entry_seq(invoke("consent", "withdraw", "u2", "content.public"))
    profile = entry_seq(invoke("consent", "withdraw", "u3", "profile"))
    erased = entry_seq(invoke("subject", "erase", "u4"))
    expected = {
        "u1-a": ("withdrawn", everything),
        "u1-b": ("withdrawn", everything),
        "u2-a": ("withdrawn", public),
        "u3-b": ("withdrawn", profile),
        "u4-a": ("erased", erased),
        "u4-b": ("erased", erased),
    }

    listings = obligation_rows("posts-train")
    for kind, rows in listings.items():
        found = {row["record_id"]: (row["reason"], int(row["cause"])) for row in rows}
        assert found == expected, kind
        assert {row["status"] for row in rows} == {"open"}, kind
    csv_text_out = invoke("dataset", "obligations", "posts-train", "-f", "csv").stdout
    assert csv_text_out.splitlines()[0] == (
        "record_id,dataset,version,reason,cause,cause_time,due,status"
    )
    for row in listings["json"]:
        assert (row["dataset"], row["version"]) == ("posts-train", "1")
        assert row["due"] > row["cause_time"]
    table = invoke("dataset", "obligations", "posts-train", "--version", "1").stdout
    assert "6 obligations: 6 open" in table
    overdue = invoke("dataset", "obligations", "posts-train", "--status", "overdue").stdout
    assert "no obligations of posts-train with status overdue" in overdue
    shown = invoke_json("dataset", "show", "posts-train@1")["build"]
    assert shown["obligations"] == {"open": 6, "overdue": 0, "fulfilled": 0, "cancelled": 0}

    # The pipeline's delete job takes the CSV as it is, then tells the ledger.
    open_csv = invoke("dataset", "obligations", "posts-train", "--status", "open", "-f", "csv")
    purge_file = ledger.home.write("files/purge.csv", open_csv.stdout)
    purged = invoke("dataset", "purge", "posts-train@1", str(purge_file))
    purge_seq = entry_seq(purged)
    assert (
        f"purged 6 records from posts-train@1 as entry {purge_seq}: 6 fulfil obligations, "
        "0 voluntary" in purged.stdout
    )

    assert (
        "no obligations"
        in invoke("dataset", "obligations", "posts-train", "--status", "open").stdout
    )
    fulfilled = invoke_json("dataset", "obligations", "posts-train", "--status", "fulfilled")
    rows = fulfilled["obligations"]
    assert len(rows) == 6
    assert {row["status"] for row in rows} == {"fulfilled"}
    assert {row["closed_by"] for row in rows} == {purge_seq}
    # An erased subject's record ids are kept until purged, then dropped.
    assert sorted(row["record_id"] or "" for row in rows) == [
        "",
        "",
        "u1-a",
        "u1-b",
        "u2-a",
        "u3-b",
    ]
    fulfilled_csv = invoke(
        "dataset", "obligations", "posts-train", "--status", "fulfilled", "-f", "csv"
    )
    assert sorted(row["record_id"] for row in read_csv(fulfilled_csv.stdout))[:2] == ["", ""]
    assert "(erased, purged)" in invoke("dataset", "obligations", "posts-train").stdout

    # A voluntary removal, one id per line from stdin.
    voluntary = run("dataset", "purge", "posts-train@1", "-", "--json", stdin="u2-b\n")
    assert json.loads(voluntary.stdout)["voluntary"] == 1

    show = invoke("dataset", "show", "posts-train@1").stdout
    assert f"recorded as entry {seq}" in show
    assert "records 8: 1 members now, 7 purged" in show
    assert "0 open (0 overdue), 6 fulfilled, 0 cancelled" in show
    document = invoke_json("dataset", "show", "posts-train@1")
    assert document["build"]["members"] == 1
    independent_verify(document["receipt"], ledger.verifier_key)
    assert document["receipt"]["entries"][0]["index"] == seq

    listed = invoke("dataset", "list").stdout
    assert re.search(rf"posts-train@1\s+ai-training\s+{seq}\s", listed), listed
    builds = invoke_json("dataset", "list", "posts-train")["builds"]
    assert [(b["version"], b["members"], b["purged"]) for b in builds] == [("1", 1, 7)]

    retired = invoke("dataset", "retire", "posts-train@1", "--yes")
    assert re.search(r"retired posts-train@1 as entry \d+: 0 obligations fulfilled", retired.stdout)
    assert "retired by entry" in invoke("dataset", "show", "posts-train@1").stdout
    assert "OK" in invoke("verify").stdout


def test_retiring_fulfils_the_open_obligations(ledger: Ledger) -> None:
    record(ledger)
    invoke("consent", "withdraw", "u1", "*")
    retired = invoke_json("dataset", "retire", "posts-train@1", "--yes")
    assert retired["fulfils"] == 2
    independent_verify(retired["receipt"], ledger.verifier_key)
    build = invoke_json("dataset", "show", "posts-train@1")["build"]
    assert (build["retired"], build["members"]) == (retired["seq"], 0)
    result = invoke("dataset", "retire", "posts-train@1", "--yes", code=FAILURE)
    assert "posts-train@1 was retired" in result.output
    result = invoke("dataset", "purge", "posts-train@1", str(ledger.posts), code=FAILURE)
    assert "retired" in result.output


def test_retire_asks_first_and_without_a_terminal_needs_yes(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    record(ledger)
    size = tree_size()
    result = invoke("dataset", "retire", "posts-train@1", code=USAGE)
    assert "confirm with --yes" in result.output
    assert tree_size() == size

    monkeypatch.setattr(dataset_commands, "_can_ask", lambda: True)
    declined = run("dataset", "retire", "posts-train@1", code=FAILURE, stdin="n\n")
    assert "Retire posts-train@1 (8 members, 0 open obligations)?" in declined.output
    assert "nothing retired" in declined.output
    assert tree_size() == size
    confirmed = run("dataset", "retire", "posts-train@1", stdin="y\n")
    assert "retired posts-train@1 as entry" in confirmed.stdout
    assert invoke_json("dataset", "show", "posts-train@1")["build"]["retired"] == size


def test_purge_of_non_members_fails_naming_them_and_purges_nothing(ledger: Ledger) -> None:
    record(ledger)
    invoke("consent", "withdraw", "u1", "*")
    size = tree_size()
    # u1-c (the face) and d1-a were dropped by the filter; nobody ever had post-9.
    ids = ledger.home.write("files/ids.txt", "u1-a\nu1-c\nd1-a\npost-9\n")

    result = invoke("dataset", "purge", "posts-train@1", str(ids), code=FAILURE)

    assert "3 record id(s) are not members of posts-train@1" in result.output
    assert "'d1-a', 'post-9', 'u1-c'" in result.output
    assert tree_size() == size
    assert invoke_json("dataset", "show", "posts-train@1")["build"]["obligations"]["open"] == 2

    repeated = run("dataset", "purge", "posts-train@1", "-", code=FAILURE, stdin="u1-a\nu1-a\n")
    assert "listed more than once: 'u1-a'" in repeated.output
    header_only = ledger.home.write("files/empty.csv", "record_id,reason\n")
    result = invoke("dataset", "purge", "posts-train@1", str(header_only), code=FAILURE)
    assert "lists no record ids" in result.output
    holes = ledger.home.write("files/holes.csv", "reason,record_id\nwithdrawn,u1-a\nwithdrawn,\n")
    result = invoke("dataset", "purge", "posts-train@1", str(holes), code=FAILURE)
    assert "line 3: no record_id" in result.output
    assert tree_size() == size


def test_member_proof_verifies_against_the_signed_build(ledger: Ledger) -> None:
    record(ledger)
    proof = invoke_json("dataset", "proof", "posts-train@1", "u2-b")

    assert proof["leaf"]["record"] == "u2-b"
    assert (proof["leaf"]["category"], proof["leaf"]["purpose"]) == ("profile", "ai-training")
    assert proof["records"] == 8
    # The leaf, its path to members_root, and members_root in a signed entry of the log.
    _, _ = independent_verify(proof["entry"], ledger.verifier_key)
    members_root = base64.b64decode(proof["entry"]["entries"][0]["entry"]["data"]["members_root"])
    hashes = [base64.b64decode(node) for node in proof["hashes"]]
    leaf = leaf_hash(jcs(proof["leaf"]))
    assert verify_inclusion(proof["index"], proof["records"], leaf, hashes, members_root)
    assert not verify_inclusion(
        proof["index"], proof["records"], leaf_hash(jcs({**proof["leaf"], "record": "u2-a"})),
        hashes, members_root,
    )  # fmt: skip

    shown = invoke("dataset", "proof", "posts-train@1", "u2-b").stdout
    assert f"u2-b is member {proof['index']} of 8 of posts-train@1" in shown
    result = invoke("dataset", "proof", "posts-train@1", "u2-c", code=FAILURE)
    assert "'u2-c' is not a member of posts-train@1" in result.output


def test_obligations_follow_every_page(ledger: Ledger) -> None:
    # More obligations than a page holds (1,000), from one withdrawal.
    many = [["record_id", "subject_id", "category"]]
    many += [[f"r{n:05d}", "u1", "content.public"] for n in range(1_205)]
    source = ledger.home.write("files/many.csv", csv_text(many))
    invoke("filter", str(source), "--out", str(ledger.files / "many-kept.csv"), "--record", "m@1")
    invoke("consent", "withdraw", "u1", "*")

    listings = obligation_rows("m")
    for kind, rows in listings.items():
        assert [row["record_id"] for row in rows] == [f"r{n:05d}" for n in range(1_205)], kind
    assert "1205 obligations: 1205 open" in invoke("dataset", "obligations", "m").stdout


def test_sweep_reports_how_far_obligations_are_current(ledger: Ledger) -> None:
    record(ledger)
    swept = invoke_json("dataset", "sweep")
    assert set(swept) == {"swept_until", "through_seq", "transactions", "done"}
    assert swept["done"] is True  # the command sweeps until nothing is left
    assert swept["through_seq"] <= tree_size()
    text = invoke("dataset", "sweep").stdout
    assert "obligations are current until" in text


def test_dataset_errors_name_what_is_wrong(ledger: Ledger) -> None:
    record(ledger)
    ids = str(ledger.posts)
    cases: list[tuple[list[str], int, str]] = [
        (["dataset", "show", "nope@1"], FAILURE, "no build nope@1 has been recorded"),
        (["dataset", "show", "posts-train@9"], FAILURE, "no build posts-train@9"),
        (["dataset", "show", "posts-train"], USAGE, "expected NAME@VERSION, got 'posts-train'"),
        (["dataset", "show", "Posts@1"], USAGE, "NAME@VERSION: must be 1 to 128 characters"),
        (["dataset", "list", "nope"], FAILURE, "no dataset 'nope' has been recorded"),
        (["dataset", "obligations", "nope"], FAILURE, "no build nope has been recorded"),
        (["dataset", "obligations", "posts-train", "--version", "2"], FAILURE, "posts-train@2"),
        (["dataset", "obligations", "posts-train", "--status", "late"], USAGE, "late"),
        (["dataset", "obligations", "posts-train", "--json", "-f", "csv"], USAGE, "not both"),
        (["dataset", "purge", "nope@1", ids], FAILURE, "no build nope@1"),
        (["dataset", "purge", "posts-train@1", "missing.csv"], FAILURE, "missing.csv"),
        (["dataset", "retire", "nope@1", "--yes"], FAILURE, "no build nope@1"),
        (["dataset", "proof", "nope@1", "u1-a"], FAILURE, "no build nope@1"),
        (["dataset", "proof", "posts-train@1", "x" * 257], USAGE, "1 to 256 characters"),
    ]
    wrong = []
    for args, code, message in cases:
        result = runner.invoke(app, args, env={"COLUMNS": "400"})
        if (
            result.exit_code != code
            or message not in result.output
            or result.exception
            and not (isinstance(result.exception, SystemExit))
        ):
            wrong.append(
                f"`{' '.join(args)}` -> {result.exit_code} (want {code}, {message!r})\n"
                + describe(result)
            )
    assert not wrong, "\n\n".join(wrong)
    # A listing that fails prints nothing a pipeline could take for an empty one.
    for fmt in ("csv", "json"):
        result = runner.invoke(app, ["dataset", "obligations", "nope", "-f", fmt])
        assert (result.exit_code, result.stdout) == (FAILURE, ""), describe(result)
