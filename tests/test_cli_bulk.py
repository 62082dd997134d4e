"""The bulk and admin commands of the CLI (SPEC §5): `import`, `filter`, `demo seed`,
`clients`, `serve --help`, on SQLite and on PostgreSQL.

Like tests/test_cli.py, every test drives the real Typer app in-process through
`CliRunner`, with settings taken from the environment (`CONSENT_LEDGER_HOME`,
`CONSENT_LEDGER_DATABASE_URL`) as a user's shell would give them, and checks
what the commands print, what they write and their exit codes (0 success,
1 failure, 2 usage error).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from ledger.demo import write_csv, write_jsonl
from ledger.service.clients import authenticate
from ledger.store.db import make_engine
from tests.cli_harness import (
    FAILURE,
    TIMESTAMP,
    USAGE,
    Home,
    cli_environment,
    invoke,
    invoke_json,
    tree_size,
)

ORIGIN = "test.example/bulk"
API_KEY = re.compile(r"clk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}")


# --- running the CLI -----------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Home:
    """An initialised ledger (`consent-ledger init`), reached through the environment."""
    home = cli_environment(tmp_path, database_url, monkeypatch)
    invoke("init", "--origin", ORIGIN)
    return home


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


# --- import --------------------------------------------------------------------------------

IMPORT_SUMMARY_KEYS = {
    "import_id",
    "rows",
    "invalid",
    "imported_rows",
    "entries",
    "batches",
    "resumed_after_rows",
    "already_imported",
    "tree_size",
}

BAD_HEADER = ["subject_id", "jurisdiction", "category", "decision", "effective"]
BAD_ROWS = [
    ["good-0", "US", "content.public", "granted", ""],
    ["good-1", "DE", "profile", "denied", ""],
    ["bad-cat", "US", "no.such.category", "granted", ""],  # line 4
    ["good-2", "", "activity", "withdrawn", ""],
    ["bad-dec", "US", "profile", "maybe", ""],  # line 6
    ["good-3", "FR", "", "", ""],
    ["", "US", "profile", "granted", ""],  # line 8: no subject_id
    ["good-4", "US", "location", "granted", "2024-02-03T04:05:06Z"],
    ["bad-time", "US", "profile", "granted", "last tuesday"],  # line 10
    ["bad-jur", "XX", "profile", "granted", ""],  # line 11
]
# line -> the field the error names
BAD_LINES = {4: "category", 6: "decision", 8: "subject_id", 10: "effective", 11: "jurisdiction"}


def bad_file(home: Home) -> Path:
    text = csv_text(BAD_HEADER, BAD_ROWS) + "bad-count,US\n"  # line 12: wrong field count
    return home.write("bad.csv", text)


def test_import_prints_what_it_did_and_the_log_verifies(home: Home) -> None:
    path = write_csv(home.tmp_path / "consents.csv", 600)
    before = tree_size()
    result = invoke("import", str(path), "--batch-size", "200")
    match = re.search(
        r"imported 600 rows as (\d+) entries in 3 checkpoints; 0 rejected; tree size (\d+)",
        result.stdout,
    )
    assert match, result.output
    entries, size = int(match.group(1)), int(match.group(2))
    assert size == tree_size() == before + entries
    assert "OK" in invoke("verify").stdout


def test_import_json_summary(home: Home) -> None:
    path = write_jsonl(home.tmp_path / "consents.jsonl", 450)
    before = tree_size()
    summary = invoke_json("import", str(path), "--batch-size", "100")
    assert set(summary) == IMPORT_SUMMARY_KEYS, summary
    assert summary["import_id"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert summary["rows"] == summary["imported_rows"] == 450
    assert summary["invalid"] == 0
    assert summary["batches"] == 5
    assert summary["resumed_after_rows"] == 0
    assert summary["already_imported"] is False
    assert summary["tree_size"] == tree_size() == before + summary["entries"]
    assert all(
        isinstance(summary[key], int)
        for key in IMPORT_SUMMARY_KEYS - {"import_id", "already_imported"}
    )

    again = invoke_json("import", str(path))
    assert again["already_imported"] is True
    assert again["import_id"] == summary["import_id"]
    assert (again["entries"], again["batches"], again["imported_rows"]) == (0, 0, 0)
    assert again["tree_size"] == summary["tree_size"] == tree_size()


def test_reimport_says_already_imported(home: Home) -> None:
    path = write_csv(home.tmp_path / "consents.csv", 120)
    invoke("import", str(path))
    size = tree_size()
    result = invoke("import", str(path))
    assert "already imported" in result.stdout
    assert "nothing added" in result.stdout
    assert tree_size() == size


def test_a_bad_file_exits_2_naming_every_bad_row_and_writes_nothing(home: Home) -> None:
    path = bad_file(home)
    before = tree_size()
    result = invoke("import", str(path), code=USAGE)
    for line, field_name in {**BAD_LINES, 12: "fields"}.items():
        named = [text for text in result.output.splitlines() if f"line {line}" in text]
        assert named, f"line {line} not named:\n{result.output}"
        assert field_name in named[0], f"line {line} without {field_name}:\n{result.output}"
    for good in (2, 3, 5, 7, 9):
        assert f"line {good}:" not in result.output
        assert f"line {good}," not in result.output
    assert "6 of 11 rows are invalid" in result.output
    assert tree_size() == before
    invoke("subject", "show", "good-0", code=FAILURE)


def test_a_file_with_many_bad_rows_names_every_one(home: Home) -> None:
    rows = [[f"bad-{n}", "US", "no.such.category", "granted", ""] for n in range(60)]
    path = home.write("many-bad.csv", csv_text(BAD_HEADER, rows))
    result = invoke("import", str(path), code=USAGE)
    missing = [line for line in range(2, 62) if f"line {line}," not in result.output]
    assert not missing, f"lines not named: {missing}\n{result.output}"


def test_a_file_that_is_not_utf8_is_a_usage_error_naming_the_line(home: Home) -> None:
    path = home.write(
        "latin1.csv",
        b"subject_id,decision,category\nok-1,granted,profile\nJos\xe9,denied,profile\n",
    )
    before = tree_size()
    result = invoke("import", str(path), code=USAGE)
    assert "line 3" in result.output
    assert tree_size() == before


def test_skip_invalid_writes_the_rejects_and_imports_the_rest(home: Home) -> None:
    path = bad_file(home)
    rejects = home.tmp_path / "rejects.csv"
    result = invoke("import", str(path), "--skip-invalid", "--rejects", str(rejects))
    assert "imported 5 rows" in result.stdout, result.output
    assert "6 rejected" in result.stdout, result.output

    with rejects.open(newline="", encoding="utf-8") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["line", "field", "error", "row"]
    by_line = {int(row[0]): row for row in table[1:]}
    assert sorted(by_line) == [4, 6, 8, 10, 11, 12], table
    for line, field_name in BAD_LINES.items():
        _, field, error, raw = by_line[line]
        assert field_name in field, by_line[line]
        assert error, by_line[line]
        original = dict(zip(BAD_HEADER, BAD_ROWS[line - 2], strict=True))
        assert orjson.loads(raw) == original
    assert "fields" in by_line[12][2]

    for subject_id, jurisdiction in (("good-0", "US"), ("good-3", "FR"), ("good-4", "US")):
        shown = invoke_json("subject", "show", subject_id)
        assert shown["jurisdiction"] == jurisdiction
    located = invoke_json("subject", "show", "good-4")["decisions"]
    assert [(d["category"], d["effective"]) for d in located] == [
        ("location", "2024-02-03T04:05:06.000000Z")
    ]
    for subject_id in ("bad-cat", "bad-dec", "bad-time", "bad-jur"):
        invoke("subject", "show", subject_id, code=FAILURE)
    assert "OK" in invoke("verify").stdout


def test_rejects_without_skip_invalid_is_a_usage_error(home: Home) -> None:
    path = bad_file(home)
    rejects = home.tmp_path / "rejects.csv"
    before = tree_size()
    result = invoke("import", str(path), "--rejects", str(rejects), code=USAGE)
    assert "--skip-invalid" in result.output
    assert not rejects.exists()
    assert tree_size() == before


def test_import_of_a_missing_file_is_a_usage_error(home: Home) -> None:
    invoke("import", str(home.tmp_path / "nowhere.csv"), code=USAGE)


# --- filter --------------------------------------------------------------------------------

SUBJECTS = ("us-default", "de-optin", "us-refuser", "kid", "de-face", "stranger")
CATEGORIES = ("content.public", "profile.employment", "biometric.face", "content.private.messages")
# What SPEC §3.4 and the default policy say for the population below, purpose ai-training.
REASONS: dict[tuple[str, str], str] = {}
for _category in CATEGORIES:
    REASONS["us-default", _category] = "default-allow"
    REASONS["de-optin", _category] = "default-deny"
    REASONS["us-refuser", _category] = "refused"
    REASONS["kid", _category] = "minor"
    REASONS["de-face", _category] = "default-deny"
    REASONS["stranger", _category] = "unknown-subject"
REASONS["us-default", "biometric.face"] = "explicit-consent-required"
REASONS["de-optin", "biometric.face"] = "explicit-consent-required"
REASONS["de-optin", "content.public"] = "consent"
REASONS["de-face", "biometric.face"] = "consent"
for _subject in SUBJECTS:
    if _subject != "stranger":
        REASONS[_subject, "content.private.messages"] = "prohibited"
ELIGIBLE_REASONS = {"default-allow", "consent"}


@dataclass
class Dataset:
    records: list[dict[str, str]]
    csv_path: Path
    jsonl_path: Path


@pytest.fixture
def population(home: Home) -> Dataset:
    people = csv_text(
        ["subject_id", "jurisdiction", "minor", "category", "decision", "explicit"],
        [
            ["us-default", "US", "", "", "", ""],
            ["de-optin", "DE", "", "content.public", "granted", ""],
            ["us-refuser", "US", "", "*", "denied", ""],
            ["kid", "US", "true", "", "", ""],
            ["de-face", "DE", "", "biometric.face", "granted", "true"],
        ],
    )
    invoke("import", str(home.write("people.csv", people)))
    records = [
        {
            "post": str(n),
            "subject_id": SUBJECTS[n % len(SUBJECTS)],
            "category": CATEGORIES[(n // len(SUBJECTS)) % len(CATEGORIES)],
            "text": f'post {n}, with a comma and a "quote"',
        }
        for n in range(144)
    ]
    csv_path = home.write(
        "posts.csv",
        csv_text(list(records[0]), [list(record.values()) for record in records]),
    )
    jsonl_path = home.write(
        "posts.jsonl",
        "".join(json.dumps(record) + "\n" for record in records),
    )
    return Dataset(records, csv_path, jsonl_path)


def read_output(path: Path) -> list[dict[str, str]]:
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def expected_kept(records: list[dict[str, str]], category: str | None = None) -> list[str]:
    return [
        record["post"]
        for record in records
        if REASONS[record["subject_id"], category or record["category"]] in ELIGIBLE_REASONS
    ]


def expected_dropped(records: list[dict[str, str]], category: str | None = None) -> Counter[str]:
    reasons = (REASONS[record["subject_id"], category or record["category"]] for record in records)
    return Counter(reason for reason in reasons if reason not in ELIGIBLE_REASONS)


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_filter_with_a_category_column(home: Home, population: Dataset, kind: str) -> None:
    source = population.csv_path if kind == "csv" else population.jsonl_path
    out = home.tmp_path / f"kept.{kind}"
    result = invoke("filter", str(source), "--out", str(out))
    kept = read_output(out)
    # Kept records come out unchanged and in their original order.
    assert kept == [r for r in population.records if r["post"] in expected_kept(population.records)]
    assert f"kept {len(kept)} of {len(population.records)} records" in result.stdout
    match = re.search(r"reproduce with: --as-of (\d+) --at (\S+)", result.stdout)
    assert match, result.output
    assert int(match.group(1)) == tree_size()
    assert TIMESTAMP.match(match.group(2))
    for reason, number in expected_dropped(population.records).items():
        assert f"dropped {number}: {reason}" in result.stdout, result.output


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_filter_with_one_category_and_a_json_summary(
    home: Home, population: Dataset, kind: str
) -> None:
    source = population.csv_path if kind == "csv" else population.jsonl_path
    out = home.tmp_path / f"kept.{kind}"
    summary = invoke_json("filter", str(source), "--out", str(out), "--category", "content.public")
    assert set(summary) >= {"rows", "kept", "dropped", "checked_at", "at"}, summary
    records = population.records
    kept_posts = expected_kept(records, "content.public")
    assert [record["post"] for record in read_output(out)] == kept_posts
    assert summary["rows"] == len(records)
    assert summary["kept"] == len(kept_posts)
    assert summary["dropped"] == dict(expected_dropped(records, "content.public"))
    assert summary["rows"] == summary["kept"] + sum(summary["dropped"].values())
    assert summary["checked_at"] == tree_size()
    assert TIMESTAMP.match(summary["at"])


def test_filter_with_a_renamed_category_column(home: Home, population: Dataset) -> None:
    renamed = [
        {"id": r["post"], "user": r["subject_id"], "kind": r["category"]}
        for r in population.records
    ]
    source = home.write("renamed.jsonl", "".join(json.dumps(r) + "\n" for r in renamed))
    out = home.tmp_path / "renamed-kept.jsonl"
    summary = invoke_json(
        "filter", str(source), "--out", str(out),
        "--subject-column", "user", "--category-column", "kind",
    )  # fmt: skip
    assert [r["id"] for r in read_output(out)] == expected_kept(population.records)
    assert summary["dropped"] == dict(expected_dropped(population.records))


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_filter_is_reproducible_with_as_of_and_at(
    home: Home, population: Dataset, kind: str
) -> None:
    source = population.csv_path if kind == "csv" else population.jsonl_path
    first_out = home.tmp_path / f"first.{kind}"
    first = invoke_json("filter", str(source), "--out", str(first_out))

    # Later writes that change answers even at the first run's `at` (effective in the past).
    past = "2020-01-01T00:00:00Z"
    invoke("consent", "grant", "us-refuser", "content.public", "--effective", past)
    invoke("consent", "withdraw", "de-optin", "content.public", "--effective", past)
    invoke("subject", "register", "stranger", "--jurisdiction", "US")
    invoke("subject", "register", "kid", "--jurisdiction", "US")  # without --minor: now an adult
    assert tree_size() > first["checked_at"]

    again_out = home.tmp_path / f"again.{kind}"
    again = invoke_json(
        "filter", str(source), "--out", str(again_out),
        "--as-of", str(first["checked_at"]), "--at", first["at"],
    )  # fmt: skip
    assert again == first
    assert again_out.read_bytes() == first_out.read_bytes()

    # Without them the later writes show: the pinned run really was pinned.
    now_out = home.tmp_path / f"now.{kind}"
    now = invoke_json("filter", str(source), "--out", str(now_out), "--at", first["at"])
    assert now["checked_at"] == tree_size()
    assert now_out.read_bytes() != first_out.read_bytes()


def test_filter_kept_rows_agree_with_check_one_by_one(home: Home, population: Dataset) -> None:
    out = home.tmp_path / "kept.csv"
    summary = invoke_json("filter", str(population.csv_path), "--out", str(out))
    kept = {record["post"] for record in read_output(out)}
    pinned = ("--as-of", str(summary["checked_at"]), "--at", summary["at"])
    disagree = []
    for record in population.records[::5]:
        answer = invoke_json("check", record["subject_id"], record["category"], *pinned)
        if answer["eligible"] != (record["post"] in kept):
            disagree.append((record, answer))
        if answer["reason"] != REASONS[record["subject_id"], record["category"]]:
            disagree.append((record, answer))
    assert not disagree, disagree


def test_filter_usage_errors(home: Home, population: Dataset) -> None:
    source = str(population.csv_path)
    out = str(home.tmp_path / "out.csv")
    result = invoke(
        "filter", source, "--out", out, "--category", "profile", "--category-column", "category",
        code=USAGE,
    )  # fmt: skip
    assert "--category" in result.output
    text_file = home.write("posts.txt", population.csv_path.read_text(encoding="utf-8"))
    result = invoke("filter", str(text_file), "--out", str(home.tmp_path / "o.txt"), code=USAGE)
    assert "posts.txt" in result.output
    result = invoke("filter", source, "--out", str(home.tmp_path / "o.jsonl"), code=USAGE)
    assert "csv" in result.output
    invoke("filter", source, "--out", out, "--as-of", "999999", code=USAGE)
    invoke("filter", str(home.tmp_path / "missing.csv"), "--out", out, code=USAGE)


def test_filter_with_an_unknown_category_or_purpose_is_a_usage_error(
    home: Home, population: Dataset
) -> None:
    source = str(population.csv_path)
    out = str(home.tmp_path / "out.csv")
    invoke("filter", source, "--out", out, "--category", "content.pubic", code=USAGE)
    invoke("filter", source, "--out", out, "--purpose", "ai-trainig", code=USAGE)


def test_filter_with_a_column_the_csv_does_not_have_is_a_usage_error(
    home: Home, population: Dataset
) -> None:
    source = str(population.csv_path)
    out = str(home.tmp_path / "out.csv")
    result = invoke("filter", source, "--out", out, "--subject-column", "user", code=USAGE)
    assert "user" in result.output
    result = invoke("filter", source, "--out", out, "--category-column", "kind", code=USAGE)
    assert "kind" in result.output


# --- demo seed -----------------------------------------------------------------------------


def test_demo_seed_then_verify(home: Home) -> None:
    posts = home.tmp_path / "posts.csv"
    result = invoke("demo", "seed", "--subjects", "300", "--posts", str(posts))
    match = re.search(r"seeded (\d+) rows as (\d+) entries; policy v2 published", result.stdout)
    assert match, result.output
    assert "wrote 15000 posts to" in result.stdout
    for build in ("posts-train@1", "profiles-train@1"):
        assert re.search(rf"recorded {build} as entry \d+: \d+ of \d+ records", result.stdout)
    for dataset in ("posts-train", "profiles-train"):
        opened = re.search(rf"{dataset}: (\d+) open purge obligations", result.stdout)
        assert opened, result.output
        assert int(opened.group(1)) > 0
    with posts.open(newline="", encoding="utf-8") as handle:
        first = next(csv.DictReader(handle))
    assert list(first) == ["record_id", "subject_id", "category", "text"]
    assert first["record_id"] == "post-000000"
    size = tree_size()
    assert size > 300
    assert "OK" in invoke("verify").stdout
    assert invoke_json("policy", "show")["version"] == 2

    written = posts.read_bytes()
    again = invoke("demo", "seed", "--subjects", "300", "--posts", str(posts))
    assert "already seeded" in again.stdout, again.output
    assert tree_size() == size
    assert invoke_json("policy", "show")["version"] == 2
    assert posts.read_bytes() == written


# --- clients -------------------------------------------------------------------------------


def test_clients_create_list_revoke(home: Home) -> None:
    result = invoke("clients", "create", "ml-platform", "--scope", "check", "--scope", "read")
    keys = API_KEY.findall(result.output)
    assert len(keys) == 1, result.output
    key = keys[0]
    engine = make_engine(home.database_url)
    try:
        client = authenticate(engine, key)
        assert client is not None
        assert client.scopes == {"check", "read"}

        listed = invoke_json("clients", "list")
        assert key not in json.dumps(listed)
        assert not API_KEY.search(json.dumps(listed))
        (mine,) = [client for client in listed if client["name"] == "ml-platform"]
        assert mine["scopes"] == ["check", "read"]
        assert mine["revoked"] is None
        assert TIMESTAMP.match(mine["created"])
        table = invoke("clients", "list").output
        assert "ml-platform" in table
        assert not API_KEY.search(table)

        invoke("clients", "revoke", "ml-platform")
        (mine,) = [c for c in invoke_json("clients", "list") if c["name"] == "ml-platform"]
        assert mine["revoked"] is not None
        assert TIMESTAMP.match(mine["revoked"])
        # The table (80 columns under CliRunner) may cut the times short: find both dates.
        (row,) = [
            line for line in invoke("clients", "list").output.splitlines() if "ml-platform" in line
        ]
        assert row.count(mine["revoked"][:10]) == 2, row
        assert authenticate(engine, key) is None
    finally:
        engine.dispose()

    invoke("clients", "revoke", "ml-platform", code=FAILURE)
    invoke("clients", "revoke", "nobody", code=FAILURE)


def test_clients_create_errors(home: Home) -> None:
    result = invoke(
        "clients", "create", "etl", "--scope", "check", "--scope", "superuser", code=USAGE
    )
    assert "superuser" in result.output
    assert not API_KEY.search(result.output)
    assert "etl" not in [client["name"] for client in invoke_json("clients", "list")]

    first = invoke("clients", "create", "etl", "--scope", "record")
    duplicate = invoke("clients", "create", "etl", "--scope", "check", code=FAILURE)
    assert "etl" in duplicate.output
    assert not API_KEY.search(duplicate.output)
    # The first key still works, with its own scopes.
    (etl,) = [c for c in invoke_json("clients", "list") if c["name"] == "etl"]
    assert etl["scopes"] == ["record"]
    assert len(API_KEY.findall(first.output)) == 1


# --- serve ---------------------------------------------------------------------------------


def test_serve_help() -> None:
    result = invoke("serve", "--help")
    for option in ("--host", "--port", "--workers"):
        assert option in result.output
