"""`filter`: a dataset in, the records their subjects allow out, in order, reproducibly."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ledger.consent.decisions import DecisionRequest
from ledger.errors import InvalidInput
from ledger.filtering import filter_dataset
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
