"""`filter`: a dataset in, the records their subjects allow out, in order, reproducibly."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ledger.consent.decisions import DecisionRequest
from ledger.errors import Conflict, InvalidInput, NotFound
from ledger.filtering import BuildRefused, filter_dataset
from ledger.service import ConsentLedger

ACTOR = "test"
CATEGORIES = ("content.public", "profile.employment", "biometric.face", "content.private.messages")


@pytest.fixture
def population(ledger: ConsentLedger) -> ConsentLedger:
    ledger.register_subject("us-default", jurisdiction="US", actor=ACTOR)
    ledger.register_subject("de-optin", jurisdiction="DE", actor=ACTOR)
    ledger.record_consents(
        "de-optin", [DecisionRequest(category="content.public", decision="granted")], actor=ACTOR
    )
    ledger.register_subject("us-refuser", jurisdiction="US", actor=ACTOR)
    ledger.record_consents(
        "us-refuser", [DecisionRequest(category="*", decision="denied")], actor=ACTOR
    )
    ledger.register_subject("kid", jurisdiction="US", minor=True, actor=ACTOR)
    return ledger


def _records() -> list[dict[str, str]]:
    subjects = ("us-default", "de-optin", "us-refuser", "kid", "stranger")
    return [
        {"post": str(i), "subject_id": subjects[i % 5], "category": CATEGORIES[i % 4]}
        for i in range(200)
    ]


def _expected(ledger: ConsentLedger, records: list[dict[str, str]]) -> list[str]:
    return [
        record["post"]
        for record in records
        if ledger.check(record["subject_id"], record["category"]).eligible
    ]


def test_csv_keeps_exactly_the_eligible_rows_in_order(
    population: ConsentLedger, tmp_path: Path
) -> None:
    records = _records()
    source, out = tmp_path / "in.csv", tmp_path / "out.csv"
    with source.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["post", "subject_id", "category"])
        writer.writeheader()
        writer.writerows(records)

    summary = filter_dataset(population, source, out)

    with out.open(newline="") as handle:
        kept = [row["post"] for row in csv.DictReader(handle)]
    assert kept == _expected(population, records)
    assert summary.kept == len(kept)
    assert summary.rows == 200
    assert sum(summary.dropped.values()) == 200 - len(kept)
    assert {"unknown-subject", "minor", "refused", "prohibited"} <= set(summary.dropped)


def test_jsonl_with_one_category_writes_lines_unchanged(
    population: ConsentLedger, tmp_path: Path
) -> None:
    records = _records()
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [json.dumps({**record, "extra": {"nested": [1, 2]}}) for record in records]
    source.write_text("\n".join(lines) + "\n")

    filter_dataset(population, source, out, category="content.public", category_column=None)

    kept = out.read_text().splitlines()
    expected = [
        line
        for line, record in zip(lines, records, strict=True)
        if population.check(record["subject_id"], "content.public").eligible
    ]
    assert kept == expected


def test_parquet_keeps_the_eligible_rows(population: ConsentLedger, tmp_path: Path) -> None:
    records = _records()
    source, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.Table.from_pylist(records), source)

    filter_dataset(population, source, out)

    assert [row["post"] for row in pq.read_table(out).to_pylist()] == _expected(population, records)


def test_as_of_and_at_reproduce_a_build_after_later_writes(
    population: ConsentLedger, tmp_path: Path
) -> None:
    records = _records()
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(record) + "\n" for record in records))
    first = filter_dataset(population, source, tmp_path / "a.jsonl")

    population.record_consents(
        "us-default", [DecisionRequest(category="*", decision="withdrawn")], actor=ACTOR
    )
    again = filter_dataset(
        population, source, tmp_path / "b.jsonl", as_of=first.checked_at, at=first.at
    )
    assert (again.checked_at, again.at, again.kept) == (first.checked_at, first.at, first.kept)
    now = filter_dataset(population, source, tmp_path / "c.jsonl")

    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert now.kept < first.kept
    assert now.dropped["withdrawn"] > 0


def test_bad_records_are_dropped_and_counted_not_fatal(
    population: ConsentLedger, tmp_path: Path
) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(
        '{"subject_id": "us-default", "category": "content.public"}\n'
        "not json\n"
        '{"subject_id": "us-default", "category": "no-such-category"}\n'
        '{"category": "content.public"}\n'
    )

    summary = filter_dataset(population, source, out)

    assert summary.kept == 1
    assert summary.dropped == {"invalid category": 1, "invalid subject_id": 2}


@pytest.mark.parametrize(
    ("source", "out", "message"),
    [
        ("in.txt", "out.txt", "cannot tell the format"),
        ("in.csv", "out.jsonl", "the output must be csv"),
    ],
)
def test_unusable_file_names_are_refused(
    population: ConsentLedger, tmp_path: Path, source: str, out: str, message: str
) -> None:
    (tmp_path / source).write_text("subject_id,category\n")
    with pytest.raises(InvalidInput, match=message):
        filter_dataset(population, tmp_path / source, tmp_path / out)


# --- filter --record: checked and recorded in one pass -------------------------------------


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory holding only the test's dataset files (the ledger lives beside it)."""
    path = tmp_path / "files"
    path.mkdir()
    return path


def _posts(records: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"record_id": f"post-{record['post']}", **record} for record in records]


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _leftovers(directory: Path, *expected: str) -> list[str]:
    """Files in `directory` besides the expected ones (a half-written output, say)."""
    return sorted(path.name for path in directory.iterdir() if path.name not in expected)


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_recording_keeps_what_filter_keeps_and_records_it_as_the_members(
    population: ConsentLedger, workdir: Path, kind: str
) -> None:
    rows = _posts(_records())
    source = workdir / f"in.{kind}"
    if kind == "csv":
        _write_csv(source, rows)
    elif kind == "jsonl":
        source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), source)
    plain = filter_dataset(population, source, workdir / f"plain.{kind}")

    summary = filter_dataset(
        population, source, workdir / f"out.{kind}", record="posts-train@1", actor=ACTOR
    )

    assert (workdir / f"out.{kind}").read_bytes() == (workdir / f"plain.{kind}").read_bytes()
    assert (summary.rows, summary.kept, summary.dropped) == (plain.rows, plain.kept, plain.dropped)
    assert summary.build is not None
    build = summary.build.summary
    assert (build.dataset, build.version, build.purpose) == ("posts-train", "1", "ai-training")
    assert (build.records, build.lines, build.errors) == (plain.kept, 200, 0)
    assert (build.checked_at, build.at) == (summary.checked_at, summary.at)
    recorded = population.dataset_build("posts-train", "1")["build"]
    assert (recorded["records"], recorded["members"], recorded["seq"]) == (
        plain.kept,
        plain.kept,
        build.seq,
    )
    kept_ids = [f"post-{post}" for post in _expected(population, _records())]
    proof = population.member_proof("posts-train", "1", kept_ids[0])
    assert proof["leaf"]["record"] == kept_ids[0]
    dropped_id = next(r["record_id"] for r in rows if r["record_id"] not in set(kept_ids))
    with pytest.raises(NotFound, match=dropped_id):
        population.member_proof("posts-train", "1", dropped_id)
    document = summary.to_json()
    assert document["build"] == build.to_json()
    assert document["receipt"]["entries"][0]["index"] == build.seq
    assert _leftovers(workdir, source.name, f"plain.{kind}", f"out.{kind}") == []


def test_several_categories_per_record_in_a_cell_a_list_or_the_option(
    population: ConsentLedger, workdir: Path
) -> None:
    cells = [
        ("a", "us-default", "content.public|profile"),  # both allowed
        ("b", "us-default", "content.public|biometric.face"),  # the face needs explicit consent
        ("c", "de-optin", "content.public|profile"),  # consent for one, default-deny the other
    ]
    source = _write_csv(
        workdir / "in.csv",
        [{"record_id": r, "subject_id": s, "category": c} for r, s, c in cells],
    )
    summary = filter_dataset(population, source, workdir / "out.csv", record="d@1", actor=ACTOR)
    assert summary.kept == 1
    assert summary.dropped == {"explicit-consent-required": 1, "default-deny": 1}
    proof = population.member_proof("d", "1", "a")
    assert proof["leaf"]["category"] == ["content.public", "profile"]

    lines = [
        {"record_id": record_id, "subject_id": subject, "category": category.split("|")}
        for record_id, subject, category in cells
    ]
    jsonl = workdir / "in.jsonl"
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    listed = filter_dataset(population, jsonl, workdir / "out.jsonl", record="d@2", actor=ACTOR)
    assert (listed.kept, listed.dropped) == (summary.kept, summary.dropped)

    one = filter_dataset(
        population,
        source,
        workdir / "one.csv",
        category="content.public|profile",
        category_column=None,
        record="d@3",
        actor=ACTOR,
    )
    assert (one.kept, one.dropped) == (2, {"default-deny": 1})
    with pytest.raises(InvalidInput, match="--category"):
        filter_dataset(
            population,
            source,
            workdir / "bad.csv",
            category="content.public|no-such",
            category_column=None,
            record="d@4",
            actor=ACTOR,
        )


def test_a_row_without_a_record_id_is_an_error_on_its_row_not_the_build(
    population: ConsentLedger, workdir: Path
) -> None:
    source = _write_csv(
        workdir / "in.csv",
        [
            {"record_id": "r1", "subject_id": "us-default", "category": "content.public"},
            {"record_id": "", "subject_id": "us-default", "category": "content.public"},
            {"record_id": "r3", "subject_id": "us-default", "category": ""},
            {"record_id": "r4", "subject_id": "us-default", "category": "profile"},
        ],
    )
    summary = filter_dataset(population, source, workdir / "out.csv", record="d@1", actor=ACTOR)

    assert (summary.rows, summary.kept) == (4, 2)
    assert summary.dropped == {"invalid record_id": 1, "invalid category": 1}
    assert [(error.line, error.error.field) for error in summary.errors] == [
        (2, "record_id"),
        (3, "category"),
    ]
    assert summary.build is not None
    assert (summary.build.summary.records, summary.build.summary.errors) == (2, 2)
    assert summary.to_json()["errors"][0] == {
        "line": 2,
        "error": {"field": "record_id", "message": "is required"},
    }


@pytest.mark.parametrize(
    ("record_ids", "named"),
    [
        (["p1", "p2", "p1", "p3", "p2"], "'p1', 'p2'"),
        (["p1", "x" * 257, "p3"], "256 characters"),
    ],
)
def test_a_build_refused_leaves_no_output_and_records_nothing(
    population: ConsentLedger, workdir: Path, record_ids: list[str], named: str
) -> None:
    source = _write_csv(
        workdir / "in.csv",
        [
            {"record_id": r, "subject_id": "us-default", "category": "content.public"}
            for r in record_ids
        ],
    )
    out = workdir / "out.csv"
    size = population.checkpoint()

    with pytest.raises(BuildRefused, match=named) as refused:
        filter_dataset(population, source, out, record="posts-train@1", actor=ACTOR)

    assert "posts-train@1 was not recorded and out.csv not written" in str(refused.value)
    assert _leftovers(workdir, "in.csv") == []
    assert population.checkpoint() == size
    with pytest.raises(NotFound):
        population.dataset_build("posts-train", "1")


def test_a_version_recorded_twice_is_refused_before_any_file_is_written(
    population: ConsentLedger, workdir: Path
) -> None:
    source = _write_csv(workdir / "in.csv", _posts(_records()))
    filter_dataset(population, source, workdir / "first.csv", record="posts-train@1", actor=ACTOR)
    before = (workdir / "first.csv").read_bytes()

    with pytest.raises(Conflict, match="posts-train@1 is recorded already"):
        filter_dataset(population, source, workdir / "again.csv", record="posts-train@1")
    # An existing output is left as it was, not replaced by an unrecorded one.
    with pytest.raises(Conflict):
        filter_dataset(population, source, workdir / "first.csv", record="posts-train@1")

    assert _leftovers(workdir, "in.csv", "first.csv") == []
    assert (workdir / "first.csv").read_bytes() == before


@pytest.mark.parametrize(
    ("options", "field", "message"),
    [
        ({"record_column": "id"}, "--record-column", "no column 'id' (it has record_id, post"),
        ({"record": "Posts@1"}, "--record", "must be 1 to 128 characters"),
        ({"record": "posts"}, "--record", "expected NAME@VERSION"),
    ],
)
def test_recording_usage_errors_name_what_is_wrong(
    population: ConsentLedger, workdir: Path, options: dict[str, str], field: str, message: str
) -> None:
    source = _write_csv(workdir / "in.csv", _posts(_records()))
    arguments = {"record": "posts-train@1", **options}
    with pytest.raises(InvalidInput, match=re.escape(message)) as error:
        filter_dataset(population, source, workdir / "out.csv", actor=ACTOR, **arguments)
    assert error.value.field == field
    assert _leftovers(workdir, "in.csv") == []


def test_jsonl_fields_no_record_has_are_usage_errors_not_a_build_of_errors(
    population: ConsentLedger, workdir: Path
) -> None:
    source = workdir / "in.jsonl"
    lines = [{"id": f"p{n}", "subject_id": "us-default", "category": "profile"} for n in range(3)]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))

    with pytest.raises(InvalidInput, match="has a field 'record_id' \\(they have category, id,"):
        filter_dataset(population, source, workdir / "out.jsonl", record="d@1", actor=ACTOR)
    assert _leftovers(workdir, "in.jsonl") == []
    with pytest.raises(NotFound):
        population.dataset_build("d", "1")

    # A field some records lack is an error on their rows only.
    lines[1] = {"subject_id": "us-default", "category": "profile"}
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = filter_dataset(
        population, source, workdir / "out.jsonl", record="d@1", record_column="id", actor=ACTOR
    )
    assert (summary.kept, summary.dropped) == (2, {"invalid record_id": 1})
