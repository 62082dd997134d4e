"""The period report's datasets section (SPEC §7.2): figures, verify-report, HTML and CSV.

The ledger's clock is set by the test (`clock`), so that causes, purges and the
window's end fall on whole days and every figure can be asserted exactly. Runs on
SQLite and PostgreSQL (the `ledger` fixture).
"""

from __future__ import annotations

import csv
import io
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from cli import report as report_cli
from ledger import timestamps
from ledger.consent.decisions import DecisionRequest
from ledger.errors import VerificationError
from ledger.reports import dumps_document, load_document, period_report, verify_report
from ledger.reports.envelope import sign_report
from ledger.reports.html import render_html
from ledger.reports.rows import DATASET_COLUMNS, PERIOD_COLUMNS, render_csv
from ledger.service import BuildItem, ConsentLedger
from ledger.timestamps import format_timestamp
from ledger.tlog.notes import VerifierKey

ACTOR = "test"
DAY = 86_400


class Clock:
    """The ledger's `utc_now`, moved by the test a whole number of days at a time."""

    def __init__(self, base: datetime) -> None:
        self.base = base
        self.now = base

    def __call__(self) -> datetime:
        return self.now

    def at(self, day: int) -> str:
        return format_timestamp(self.base + timedelta(days=day))

    def day(self, day: int) -> None:
        assert self.base + timedelta(days=day) >= self.now, "the clock only moves forward"
        self.now = self.base + timedelta(days=day)


@pytest.fixture
def clock(ledger: ConsentLedger, monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Every ledger module's `utc_now` (entry times, checks, obligations, reports), from
    a midnight after the fixture's own entries."""
    real = timestamps.utc_now
    base = (real() + timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)
    fake = Clock(base)
    patched = 0
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] == "ledger" and getattr(module, "utc_now", None) is real:
            monkeypatch.setattr(module, "utc_now", fake)
            patched += 1
    assert patched >= 4  # the log, the checker, the dataset service, the period report
    return fake


@dataclass
class Story:
    withdrawal_u1: int
    withdrawal_u4: int
    erasure_u2: int
    purge: int
    retirement: int
    late_purge: int


def build(ledger: ConsentLedger, dataset: str, records: dict[str, str]) -> None:
    """Record a build of `content.public` records (record id → subject id)."""
    with ledger.dataset_recorder(dataset, "1", actor=ACTOR) as recorder:
        answers = recorder.check(
            [
                BuildItem(line, record_id, subject_id, "content.public")
                for line, (record_id, subject_id) in enumerate(records.items(), 1)
            ]
        )
        assert all(answer.to_json().get("eligible") for answer in answers), answers
        recorder.finish()


def withdraw(ledger: ConsentLedger, subject_id: str) -> int:
    sealed = ledger.record_consents(
        subject_id, [DecisionRequest("content.public", "withdrawn")], actor=ACTOR
    )
    return sealed.entries[0].seq


def tell_the_story(ledger: ConsentLedger, clock: Clock) -> Story:
    """Day 0: six subjects. The window is days 1 to 40:
    day 1   builds photos@1 (p0..p5 of u0..u5) and posts@1 (q0..q3 of u0..u3)
    day 2   u1 and u4 withdraw (obligations p1, q1, p4)
    day 3   u2 is erased (obligations p2, q2)
    day 5   purge photos@1 p1, p2 (fulfilled after 3 and 2 days) and p5 (voluntary)
    day 6   retire posts@1 (q1, q2 fulfilled after 4 and 3 days; q0, q3 removed)
    day 10  u0 withdraws (obligation p0), day 12 grants again (p0's is cancelled)
    day 20  u3 withdraws (obligation p3, due day 50: open, not overdue, at day 40)
    p4 is due on day 32: overdue at day 40, and purged after the window, on day 42.
    """
    clock.day(0)
    for number in range(6):
        ledger.register_subject(f"u{number}", jurisdiction="US", actor=ACTOR)
    clock.day(1)
    build(ledger, "photos", {f"p{n}": f"u{n}" for n in range(6)})
    build(ledger, "posts", {f"q{n}": f"u{n}" for n in range(4)})
    clock.day(2)
    withdrawal_u1 = withdraw(ledger, "u1")
    withdrawal_u4 = withdraw(ledger, "u4")
    clock.day(3)
    erasure_u2 = ledger.erase_subject("u2", actor=ACTOR).entries[0].seq
    clock.day(5)
    purge = ledger.purge_records("photos", "1", ["p1", "p2", "p5"], actor=ACTOR)
    assert (purge.records, purge.fulfils) == (3, 2)
    clock.day(6)
    retirement = ledger.retire_build("posts", "1", actor=ACTOR)
    assert retirement["fulfils"] == 2
    clock.day(10)
    withdraw(ledger, "u0")
    clock.day(12)
    ledger.record_consents("u0", [DecisionRequest("content.public", "granted")], actor=ACTOR)
    clock.day(20)
    withdraw(ledger, "u3")
    clock.day(42)
    late = ledger.purge_records("photos", "1", ["p4"], actor=ACTOR)
    clock.day(45)
    return Story(
        withdrawal_u1=withdrawal_u1,
        withdrawal_u4=withdrawal_u4,
        erasure_u2=erasure_u2,
        purge=purge.seq,
        retirement=retirement["seq"],
        late_purge=late.seq,
    )


def keys_of(ledger: ConsentLedger) -> list[VerifierKey]:
    return [VerifierKey.parse(ledger.verifier_key())]


def roundtrip(document: dict[str, Any]) -> dict[str, Any]:
    return load_document(dumps_document(document)).document


def report(ledger: ConsentLedger, clock: Clock, first: int, end: int | None) -> dict[str, Any]:
    document, _ = period_report(
        ledger,
        start=clock.at(first),
        end=None if end is None else clock.at(end),
        run_verify=False,
    )
    return roundtrip(document)


def resigned(ledger: ConsentLedger, document: dict[str, Any]) -> dict[str, Any]:
    """Changed content signed with the ledger's own key: only the evidence can catch it."""
    return sign_report(document["report"], ledger.signing_key())


def nothing(builds: int = 0) -> dict[str, Any]:
    return {"builds": builds, "versions": []}


# --- the figures -------------------------------------------------------------------------


def test_datasets_figures_of_a_period(ledger: ConsentLedger, clock: Clock) -> None:
    story = tell_the_story(ledger, clock)
    document = report(ledger, clock, 1, 40)
    section = document["report"]["datasets"]
    assert section["at"] == clock.at(40)
    assert section["by_dataset"] == {
        "photos": {
            "recorded": {"builds": 1, "records": 6, "versions": ["1"]},
            "purged": {"entries": 1, "records": 3, "fulfils": 2, "voluntary": 1},
            "retired": nothing(),
            "obligations": {
                "opened": 5,  # p1, p4 (day 2), p2 (day 3), p0 (day 10), p3 (day 20)
                "fulfilled": 2,
                "cancelled": 1,  # p0, eligible again on day 12
                "open_at_end": 2,  # p3, p4: p4's purge on day 42 is after the window
                "overdue_at_end": 1,  # p4, due on day 32
            },
            "cause_to_purge_seconds": {
                "count": 2,
                "median": 2 * DAY,  # nearest rank of [2 d, 3 d]
                "p95": 3 * DAY,
                "max": 3 * DAY,
            },
        },
        "posts": {
            "recorded": {"builds": 1, "records": 4, "versions": ["1"]},
            "purged": {"entries": 0, "records": 0, "fulfils": 0, "voluntary": 0},
            "retired": {"builds": 1, "versions": ["1"]},
            "obligations": {
                "opened": 2,
                "fulfilled": 2,
                "cancelled": 0,
                "open_at_end": 0,
                "overdue_at_end": 0,
            },
            "cause_to_purge_seconds": {
                "count": 2,
                "median": 3 * DAY,
                "p95": 4 * DAY,
                "max": 4 * DAY,
            },
        },
    }
    assert section["fulfilments"] == [
        {
            "closed_by": story.purge,
            "cause": story.withdrawal_u1,
            "cause_time": clock.at(2),
            "count": 1,
        },
        {
            "closed_by": story.purge,
            "cause": story.erasure_u2,
            "cause_time": clock.at(3),
            "count": 1,
        },
        {
            "closed_by": story.retirement,
            "cause": story.withdrawal_u1,
            "cause_time": clock.at(2),
            "count": 1,
        },
        {
            "closed_by": story.retirement,
            "cause": story.erasure_u2,
            "cause_time": clock.at(3),
            "count": 1,
        },
    ]
    result = verify_report(load_document(dumps_document(document)), keys_of(ledger))
    checks = "\n".join(result.checks)
    assert "datasets (2): builds recorded, purges and retirements recompute" in checks
    assert "4 obligations fulfilled" in checks
    assert f"open and overdue at {clock.at(40)}" in checks
    assert any("Datasets:" in line and "attested" in line for line in document["report"]["limits"])


def test_a_window_after_the_causes_states_them_and_the_late_purge(
    ledger: ConsentLedger, clock: Clock
) -> None:
    """Causes before the window are named, not shown: their times are the ledger's word."""
    story = tell_the_story(ledger, clock)
    document = report(ledger, clock, 41, None)
    section = document["report"]["datasets"]
    assert section["at"] == clock.at(45)  # no end: the report's own time
    assert section["by_dataset"] == {
        "photos": {
            "recorded": {"builds": 0, "records": 0, "versions": []},
            "purged": {"entries": 1, "records": 1, "fulfils": 1, "voluntary": 0},
            "retired": nothing(),
            "obligations": {
                "opened": 0,
                "fulfilled": 1,
                "cancelled": 0,
                "open_at_end": 1,  # p3, due on day 50
                "overdue_at_end": 0,
            },
            "cause_to_purge_seconds": {
                "count": 1,
                "median": 40 * DAY,
                "p95": 40 * DAY,
                "max": 40 * DAY,
            },
        }
    }
    assert section["fulfilments"] == [
        {
            "closed_by": story.late_purge,
            "cause": story.withdrawal_u4,
            "cause_time": clock.at(2),
            "count": 1,
        }
    ]
    verify_report(load_document(dumps_document(document)), keys_of(ledger))


def test_a_period_without_datasets_still_works_and_verifies(
    ledger: ConsentLedger, clock: Clock
) -> None:
    clock.day(1)
    ledger.register_subject("alice", jurisdiction="DE", actor=ACTOR)
    withdraw(ledger, "alice")
    clock.day(3)
    document = report(ledger, clock, 0, None)
    assert document["report"]["datasets"] == {
        "at": clock.at(3),
        "by_dataset": {},
        "fulfilments": [],
    }
    keys = keys_of(ledger)
    result = verify_report(load_document(dumps_document(document)), keys)
    assert any("no dataset builds, purges or obligations" in line for line in result.checks)
    page = render_html(document, ledger.signing_key())
    assert "No dataset builds in this period" in page
    assert "Purge obligations, by dataset" not in page
    assert page.count("<svg") == 3  # decisions, rates and eligibility shares, as before
    verify_report(load_document(page.encode()), keys)
    rows = list(csv.reader(io.StringIO(render_csv(document, rows="datasets"))))
    assert rows == [list(DATASET_COLUMNS)]


def test_a_report_made_before_datasets_verifies_unless_its_entries_record_some(
    ledger: ConsentLedger, clock: Clock
) -> None:
    tell_the_story(ledger, clock)
    quiet = report(ledger, clock, 12, 20)  # only u0's grant: no dataset entry
    del quiet["report"]["datasets"]
    result = verify_report(load_document(dumps_document(resigned(ledger, quiet))), keys_of(ledger))
    assert any("predates datasets" in line for line in result.checks)
    busy = report(ledger, clock, 1, 40)
    del busy["report"]["datasets"]
    with pytest.raises(VerificationError, match="report.datasets: is missing, but the window"):
        verify_report(load_document(dumps_document(resigned(ledger, busy))), keys_of(ledger))


# --- verify-report -----------------------------------------------------------------------


def _set(content: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = content
    for name in parents:
        node = node[int(name)] if isinstance(node, list) else node[name]
    node[last] = value


@pytest.mark.parametrize(
    ("path", "change", "message"),
    [
        (
            "datasets.by_dataset.photos.purged.fulfils",
            lambda value: value + 1,
            r"report\.datasets\.by_dataset\.photos\.purged\.fulfils does not match",
        ),
        (
            "datasets.by_dataset.photos.purged.voluntary",
            lambda value: 0,
            r"report\.datasets\.by_dataset\.photos\.purged\.voluntary does not match",
        ),
        (
            "datasets.by_dataset.posts.recorded.records",
            lambda value: value - 1,
            r"report\.datasets\.by_dataset\.posts\.recorded\.records does not match",
        ),
        (
            "datasets.by_dataset.posts.retired.builds",
            lambda value: 0,
            r"report\.datasets\.by_dataset\.posts\.retired\.builds does not match",
        ),
        (
            "datasets.by_dataset.photos.obligations.fulfilled",
            lambda value: value + 3,
            r"report\.datasets\.by_dataset\.photos\.obligations\.fulfilled does not match",
        ),
        (
            "datasets.by_dataset.posts.cause_to_purge_seconds.median",
            lambda value: DAY,
            r"report\.datasets\.by_dataset\.posts\.cause_to_purge_seconds\.median does not",
        ),
        (
            "datasets.by_dataset.photos.cause_to_purge_seconds.max",
            lambda value: value - 1,
            r"report\.datasets\.by_dataset\.photos\.cause_to_purge_seconds\.max does not",
        ),
        (
            "datasets.at",
            lambda value: value.replace("T00", "T01"),
            r"report\.datasets\.at does not match",
        ),
    ],
)
def test_a_changed_datasets_figure_fails_naming_it(
    ledger: ConsentLedger, clock: Clock, path: str, change: Any, message: str
) -> None:
    tell_the_story(ledger, clock)
    document = report(ledger, clock, 1, 40)
    keys = keys_of(ledger)
    content = document["report"]
    node: Any = content
    for name in path.split("."):
        node = node[name]
    _set(content, path, change(node))
    # As it stands, the signature no longer covers it.
    with pytest.raises(VerificationError, match="content changed after signing"):
        verify_report(load_document(dumps_document(document)), keys)
    # Signed again with the ledger's own key, the entries still give it away.
    with pytest.raises(VerificationError, match=message):
        verify_report(load_document(dumps_document(resigned(ledger, document))), keys)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            "more",
            r"list 3 obligations fulfilled by the purge in entry \d+, which says it fulfils 2",
        ),
        (
            "fewer",
            r"list 1 obligations fulfilled by the purge in entry \d+, which says it fulfils 2",
        ),
        ("not-a-purge", r"fulfilments\[0\]\.closed_by: entry \d+ is not a purge or retirement"),
        ("later-cause", r"fulfilments\[0\]\.cause_time is after the purge"),
        ("cause-after", r"fulfilments\[0\]\.cause: entry \d+ is not before entry \d+"),
        ("no-cause-kind", r"fulfilments\[0\]\.cause: entry \d+ is a dataset\.recorded"),
        ("repeated", r"fulfilments\[1\] is out of order or repeated"),
        ("earlier-cause", r"photos\.cause_to_purge_seconds\.max does not match"),
        ("hidden", r"by_dataset: does not list dataset 'posts'"),
    ],
)
def test_changed_fulfilments_fail(
    ledger: ConsentLedger, clock: Clock, change: str, message: str
) -> None:
    story = tell_the_story(ledger, clock)
    document = report(ledger, clock, 1, 40)
    section = document["report"]["datasets"]
    rows = section["fulfilments"]
    first = rows[0]
    if change == "more":
        first["count"] += 1
    elif change == "fewer":
        del rows[0]
    elif change == "not-a-purge":
        first["closed_by"] = story.withdrawal_u4
    elif change == "later-cause":
        first["cause_time"] = clock.at(6)
    elif change == "cause-after":
        first["cause"] = story.purge + 1
    elif change == "no-cause-kind":
        entries = document["report"]["entries"]
        first["cause"] = next(e["seq"] for e in entries if e["kind"] == "dataset.recorded")
    elif change == "repeated":
        rows.insert(1, dict(first))
    elif change == "earlier-cause":
        # An earlier cause makes the purge look slower than it was: the figures no longer
        # follow (the figures alone were left as signed).
        first["cause_time"] = clock.at(1)
    elif change == "hidden":
        del section["by_dataset"]["posts"]
    with pytest.raises(VerificationError, match=message):
        verify_report(load_document(dumps_document(resigned(ledger, document))), keys_of(ledger))


def test_obligation_states_are_attested_not_recomputed(ledger: ConsentLedger, clock: Clock) -> None:
    """What rests on members outside the log is the ledger's signed word: another figure
    signed by the same key is not something the entries can refute, and verify-report
    says so rather than claim to have checked it."""
    tell_the_story(ledger, clock)
    document = report(ledger, clock, 1, 40)
    obligations = document["report"]["datasets"]["by_dataset"]["photos"]["obligations"]
    obligations["overdue_at_end"] = 0
    keys = keys_of(ledger)
    with pytest.raises(VerificationError, match="content changed after signing"):
        verify_report(load_document(dumps_document(document)), keys)
    result = verify_report(load_document(dumps_document(resigned(ledger, document))), keys)
    assert any("attested by the ledger's signature, not recomputable" in c for c in result.checks)


# --- renderings --------------------------------------------------------------------------


def test_html_has_the_datasets_section_and_chart(ledger: ConsentLedger, clock: Clock) -> None:
    tell_the_story(ledger, clock)
    document = report(ledger, clock, 1, 40)
    page = render_html(document, ledger.signing_key())
    result = verify_report(load_document(page.encode()), keys_of(ledger))
    assert any("HTML page signed" in line for line in result.checks)
    section = page[
        page.index("<h2>Datasets and purge obligations</h2>") : page.index("<h2>Checkpoints</h2>")
    ]
    assert section.count("<svg") == 1
    assert "Purge obligations, by dataset" in section
    assert "Time from cause to purge" in section
    photos = section[section.index("<h3>photos</h3>") : section.index("<h3>posts</h3>")]
    cells = dict(re.findall(r"<tr><td>([^<]+)</td><td class=\"num\">([^<]+)</td>", photos))
    assert cells["obligations overdue at the end"] == "1"
    assert cells["… removed voluntarily"] == "1"
    assert cells["cause to purge: median"] == "2 d 0 h (172,800 s)"
    assert cells["cause to purge: longest"] == "3 d 0 h (259,200 s)"
    assert "attested by the ledger&#x27;s signature" in photos
    assert "No dataset builds in this period" not in page


def test_csv_has_the_datasets_rows(ledger: ConsentLedger, clock: Clock) -> None:
    story = tell_the_story(ledger, clock)
    document = report(ledger, clock, 1, 40)
    digest = document["signature"]["sha256"]
    rows = list(csv.DictReader(io.StringIO(render_csv(document, rows="datasets"))))
    assert tuple(rows[0]) == DATASET_COLUMNS
    by_name = {row["dataset"]: row for row in rows}
    assert list(by_name) == ["photos", "posts"]
    photos = by_name["photos"]
    assert photos["versions_recorded"] == "1"
    assert (
        photos["records_purged"],
        photos["purged_fulfilling"],
        photos["purged_voluntarily"],
    ) == (
        "3",
        "2",
        "1",
    )
    assert (photos["overdue_at_end"], photos["cause_to_purge_median_seconds"]) == ("1", "172800")
    assert by_name["posts"]["versions_retired"] == "1"
    assert by_name["posts"]["cause_to_purge_max_seconds"] == str(4 * DAY)
    assert {row["report_sha256"] for row in rows} == {digest}
    # The entry rows carry what a dataset entry says.
    entries = list(csv.DictReader(io.StringIO(render_csv(document))))
    assert tuple(entries[0]) == PERIOD_COLUMNS
    purge = next(row for row in entries if row["entry"] == str(story.purge))
    assert (purge["kind"], purge["dataset"], purge["version"]) == ("dataset.purged", "photos", "1")
    assert (purge["records"], purge["fulfils"], purge["policy_version"]) == ("3", "2", "")
    recorded = next(row for row in entries if row["kind"] == "dataset.recorded")
    assert (recorded["records"], recorded["policy_version"]) == ("6", "1")


def test_cli_writes_the_datasets_csv(ledger: ConsentLedger, clock: Clock, tmp_path: Any) -> None:
    tell_the_story(ledger, clock)
    app = typer.Typer()
    app.add_typer(report_cli.app, name="report")
    env = {
        "CONSENT_LEDGER_HOME": str(ledger.settings.home),
        "CONSENT_LEDGER_DATABASE_URL": ledger.settings.resolved_database_url,
    }
    out = tmp_path / "datasets.csv"
    result = CliRunner().invoke(
        app,
        [
            "report",
            "period",
            "--no-verify",
            "--format",
            "csv",
            "--rows",
            "datasets",
            "-o",
            str(out),
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [row["dataset"] for row in rows] == ["photos", "posts"]
    # No window end: the late purge of p4 is in, so nothing is overdue now.
    assert rows[0]["records_purged"] == "4"
    assert rows[0]["overdue_at_end"] == "0"
