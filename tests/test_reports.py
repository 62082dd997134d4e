"""Signed audit reports: subject and period, JSON and CSV, verify-report, CLI and API.

Ledger-level tests run on SQLite and PostgreSQL (the `ledger` fixture).
"""

from __future__ import annotations

import csv
import io
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from api.routes import reports as report_routes
from cli import report as report_cli
from ledger.consent.decisions import DecisionRequest
from ledger.demo import demo_policy_change, write_csv
from ledger.errors import NotFound, VerificationError
from ledger.reports import (
    dumps_document,
    load_document,
    period_report,
    subject_report,
    verify_report,
)
from ledger.reports.envelope import sign_report
from ledger.reports.rows import PERIOD_COLUMNS, SUBJECT_COLUMNS, render_csv
from ledger.service import ConsentLedger
from ledger.service.clients import create_client
from ledger.tlog.evidence import EvidenceBundle, verify_bundle
from ledger.tlog.notes import VerifierKey

ACTOR = "test"


def populate(ledger: ConsentLedger, tmp_path: Path, rows: int = 300) -> dict[str, int]:
    """A small population: three named subjects, a demo import, a policy change, more writes."""
    ledger.register_subject("alice", jurisdiction="DE", actor=ACTOR)
    ledger.register_subject("bob", jurisdiction="US", actor=ACTOR)
    ledger.register_subject("kim", jurisdiction="US", minor=True, actor=ACTOR)
    ledger.record_consents(
        "alice",
        [DecisionRequest("content.public", "granted", method="web-form", notice="privacy-2026")],
        actor=ACTOR,
    )
    ledger.record_consents(
        "bob",
        [
            DecisionRequest(
                "biometric.face", "granted", explicit=True, expires="2031-01-01T00:00Z"
            ),
            DecisionRequest("*", "denied", purpose="ai-training.generative"),
        ],
        actor=ACTOR,
    )
    before_import = ledger.tree_size()
    ledger.import_file(write_csv(tmp_path / "demo.csv", rows), actor=ACTOR)
    ledger.publish_policy(demo_policy_change(ledger.current_policy()), actor=ACTOR)
    after_policy = ledger.tree_size()
    ledger.record_consents("alice", [DecisionRequest("content.public", "withdrawn")], actor=ACTOR)
    ledger.register_subject("bob", jurisdiction="FR", actor=ACTOR)
    ledger.record_consents("bob", [DecisionRequest("profile", "granted")], actor=ACTOR)
    return {"before_import": before_import, "after_policy": after_policy}


def keys_of(ledger: ConsentLedger) -> list[VerifierKey]:
    return [VerifierKey.parse(ledger.verifier_key())]


def roundtrip(document: dict[str, Any]) -> dict[str, Any]:
    """The document as a verifier reads it back from a file."""
    return load_document(dumps_document(document)).document


def check(document: dict[str, Any], ledger: ConsentLedger) -> Any:
    return verify_report(load_document(dumps_document(document)), keys_of(ledger))


def resigned(ledger: ConsentLedger, document: dict[str, Any]) -> dict[str, Any]:
    """Sign changed content with the ledger's own key: only the proofs can catch it now."""
    return sign_report(document["report"], ledger.signing_key())


def entry_time(ledger: ConsentLedger, seq: int) -> str:
    return str(ledger.entry(seq).body["time"])


# --- subject reports ---------------------------------------------------------------------


def test_subject_report_verifies_and_matches_the_ledger(
    ledger: ConsentLedger, tmp_path: Path
) -> None:
    populate(ledger, tmp_path)
    at = "2027-01-01T00:00:00Z"
    document = roundtrip(subject_report(ledger, "bob", at=at))
    result = check(document, ledger)
    assert result.kind == "subject"
    content = document["report"]
    view = ledger.subject_view("bob", at=at)
    assert content["eligibility"] == view.eligibility
    assert [row["seq"] for row in content["decisions"]] == [d["seq"] for d in view.decisions]
    assert content["subject"]["jurisdiction"] == "FR"
    assert content["subject"]["regime"] == "gdpr"
    statuses = [record["dpv:hasConsentStatus"]["@type"] for record in content["consent_records"]]
    assert statuses == ["dpv:ConsentGiven", "dpv:ConsentRefused", "dpv:ConsentGiven"]
    face = content["consent_records"][0]
    assert face["dpv:hasProcess"]["dpv:hasLegalBasis"] == "dpv:ExplicitlyExpressedConsent"
    assert face["dpv:hasProcess"]["dpv:hasPersonalData"]["skos:exactMatch"] == ["pd:FacialPrint"]
    assert face["dpv:hasConsentStatus"]["dpv:hasDuration"]["rdf:value"].startswith("2031-01-01")
    # Decisions made before and after the policy change carry their own version.
    assert [row["policy_version"] for row in content["decisions"]] == [1, 1, 2]
    # An independent check of the evidence bundle, with the bundle verifier alone.
    bundle = EvidenceBundle.from_json(content["evidence"])
    checkpoint = verify_bundle(bundle, keys_of(ledger))
    assert checkpoint.size == content["as_of"]["tree_size"] == ledger.tree_size()
    listed = {row["seq"] for row in content["decisions"]}
    assert listed <= {item.index for item in bundle.entries}


def test_unknown_subject_has_no_report(ledger: ConsentLedger) -> None:
    with pytest.raises(NotFound):
        subject_report(ledger, "nobody")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("byte", "content changed after signing"),
        ("swap", "content changed after signing"),
        ("key", "does not verify under the given key"),
        ("proof", "inclusion proof fails"),
        ("eligibility", "report.eligibility"),
        ("decision", "report.decisions[0].method"),
        ("subject", "do not open the commitment"),
        ("foreign", "neither about subject"),
    ],
)
def test_subject_report_tampering_fails(
    ledger: ConsentLedger, tmp_path: Path, change: str, message: str
) -> None:
    populate(ledger, tmp_path, rows=40)
    document = roundtrip(subject_report(ledger, "bob"))
    keys = keys_of(ledger)
    if change == "byte":
        data = dumps_document(document)
        at = data.index(b'"method":"cli"') if b'"method":"cli"' in data else data.index(b"api")
        position = data.index(b"api", at)
        tampered = load_document(data[:position] + b"apx" + data[position + 3 :])
    elif change == "swap":
        other = roundtrip(subject_report(ledger, "alice"))
        document["signature"] = other["signature"]
        tampered = load_document(dumps_document(document))
    elif change == "key":
        from ledger.service.keys import SigningKey

        stranger = SigningKey.generate(document["report"]["origin"])
        tampered = load_document(dumps_document(sign_report(document["report"], stranger)))
    else:
        content = document["report"]
        if change == "proof":
            entry = content["evidence"]["entries"][-1]
            entry["inclusion"][0] = entry["inclusion"][1]
        elif change == "eligibility":
            cell = next(c for c in content["eligibility"] if not c["eligible"])
            cell["eligible"] = True
        elif change == "decision":
            content["decisions"][0]["method"] = "in-person"
        elif change == "subject":
            content["subject"]["id"] = "alice"
        elif change == "foreign":
            alice = roundtrip(subject_report(ledger, "alice"))["report"]
            content["evidence"] = alice["evidence"]
        tampered = load_document(dumps_document(resigned(ledger, document)))
    with pytest.raises(VerificationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        verify_report(tampered, keys)


# --- period reports ----------------------------------------------------------------------


def test_period_report_of_the_whole_log(ledger: ConsentLedger, tmp_path: Path) -> None:
    populate(ledger, tmp_path)
    document, raw = period_report(ledger, run_verify=False)
    parsed = roundtrip(document)
    result = check(parsed, ledger)
    content = parsed["report"]
    size = ledger.tree_size()
    assert len(raw) == size == content["window"]["entries"]
    entries = ledger.entries(0, size)
    assert [item["seq"] for item in content["entries"]] == list(range(size))
    decisions = [e for e in entries if e.kind == "consent.recorded"]
    counts = content["counts"]
    assert sum(counts["decisions"].values()) == len(decisions)
    for name in ("granted", "denied", "withdrawn"):
        assert counts["decisions"][name] == sum(1 for e in decisions if e.data["decision"] == name)
    assert sum(counts["by_regime"].values()) == len(decisions)
    assert content["policies"]["published"][-1]["version"] == 2
    assert content["eligibility"]["subjects_by_regime"]
    assert any("eligibility shares recompute" in line for line in result.checks)
    assert content["verify"] is None


def test_period_report_window_and_full_verify(ledger: ConsentLedger, tmp_path: Path) -> None:
    marks = populate(ledger, tmp_path)
    start = entry_time(ledger, marks["before_import"])
    end = entry_time(ledger, marks["after_policy"])
    document, _ = period_report(ledger, start=start, end=end, run_verify=True)
    content = roundtrip(document)["report"]
    window = content["window"]
    assert window["first_seq"] == marks["before_import"]
    assert window["end_seq"] == marks["after_policy"]
    assert content["verify"]["ok"] is True
    assert content["verify"]["entries"] == ledger.tree_size()
    assert content["policies"]["in_force_at_start"]["version"] == 1
    assert [p["version"] for p in content["policies"]["published"]] == [2]
    assert content["checkpoints"]["first"] is not None
    result = check(document, ledger)
    assert any("window complete" in line for line in result.checks)
    # Decisions of alice and bob would need their earlier jurisdictions: none in this window.
    later = roundtrip(period_report(ledger, start=end, run_verify=False)[0])
    assert set(later["report"]["prior_jurisdictions"]) == {
        roundtrip(subject_report(ledger, name))["report"]["subject"]["ref"]
        for name in ("alice", "bob")
    }
    check(later, ledger)


def test_period_report_accepts_dates(ledger: ConsentLedger) -> None:
    document, raw = period_report(ledger, start="2000-01-01", end="2999-01-01", run_verify=False)
    assert len(raw) == ledger.tree_size()
    assert document["report"]["window"]["from"] == "2000-01-01T00:00:00.000000Z"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("byte", "content changed after signing"),
        ("entry", "do not hash to the last checkpoint's root|different root"),
        ("drop", "holds"),
        ("count", "report.counts"),
        ("regime", "report.counts.by_regime"),
        ("frontier", "frontier"),
        ("boundary", "lies before the window"),
        ("checkpoint", "report.checkpoints.last"),
    ],
)
def test_period_report_tampering_fails(
    ledger: ConsentLedger, tmp_path: Path, change: str, message: str
) -> None:
    marks = populate(ledger, tmp_path, rows=60)
    start = entry_time(ledger, marks["before_import"])
    document = roundtrip(period_report(ledger, start=start, run_verify=False)[0])
    keys = keys_of(ledger)
    content = document["report"]
    if change == "byte":
        data = dumps_document(document)
        position = data.index(b'"granted"') + 1
        tampered = load_document(data[:position] + b"G" + data[position + 1 :])
    else:
        if change == "entry":
            decision = next(e for e in content["entries"] if e["kind"] == "consent.recorded")
            decision["data"]["decision"] = (
                "granted" if decision["data"]["decision"] != "granted" else "denied"
            )
        elif change == "drop":
            content["entries"].pop()
        elif change == "count":
            content["counts"]["decisions"]["granted"] += 1
        elif change == "regime":
            # Subjects registered before the window with a known jurisdiction and
            # decisions inside it: moving them all to `unknown` changes the counts.
            known = [ref for ref, value in content["prior_jurisdictions"].items() if value]
            assert known
            for ref in known:
                content["prior_jurisdictions"][ref] = None
        elif change == "frontier":
            content["checkpoints"]["frontier"][0] = content["checkpoints"]["frontier"][-1][::-1]
        elif change == "boundary":
            content["window"]["from"] = entry_time(ledger, marks["before_import"] - 1)
        elif change == "checkpoint":
            content["checkpoints"]["last"] = content["checkpoints"]["first"]
        tampered = load_document(dumps_document(resigned(ledger, document)))
    with pytest.raises(VerificationError, match=message):
        verify_report(tampered, keys)


# --- CSV ---------------------------------------------------------------------------------


def test_csv_rows(ledger: ConsentLedger, tmp_path: Path) -> None:
    populate(ledger, tmp_path, rows=50)
    subject = subject_report(ledger, "bob")
    rows = list(csv.DictReader(io.StringIO(render_csv(subject))))
    assert tuple(rows[0]) == SUBJECT_COLUMNS
    content = subject["report"]
    decisions = [row for row in rows if row["row"] == "decision"]
    eligibility = [row for row in rows if row["row"] == "eligibility"]
    assert len(decisions) == len(content["decisions"]) == 3
    assert len(eligibility) == len(content["eligibility"])
    assert decisions[0]["dpv_status"] == "dpv:ConsentGiven"
    assert {row["report_sha256"] for row in rows} == {subject["signature"]["sha256"]}
    period, raw = period_report(ledger, run_verify=False)
    rows = list(csv.DictReader(io.StringIO(render_csv(period))))
    assert tuple(rows[0]) == PERIOD_COLUMNS
    assert len(rows) == len(raw) == ledger.tree_size()
    assert [int(row["entry"]) for row in rows] == list(range(len(raw)))
    assert sum(row["kind"] == "consent.recorded" for row in rows) == sum(
        period["report"]["counts"]["decisions"].values()
    )


# --- CLI ---------------------------------------------------------------------------------


def cli_app() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(report_cli.app, name="report")
    app.command("verify-report")(report_cli.verify_report_command)
    return app


def test_cli_reports_and_verify_report(ledger: ConsentLedger, tmp_path: Path) -> None:
    populate(ledger, tmp_path, rows=40)
    env = {
        "CONSENT_LEDGER_HOME": str(ledger.settings.home),
        "CONSENT_LEDGER_DATABASE_URL": ledger.settings.resolved_database_url,
        "COLUMNS": "200",
    }
    app, runner = cli_app(), CliRunner()
    key = ledger.verifier_key()
    for args, name in (
        (["report", "subject", "alice"], "alice.json"),
        (["report", "subject", "alice", "--format", "html"], "alice.html"),
        (["report", "period", "--no-verify", "--format", "json"], "period.json"),
    ):
        out = tmp_path / name
        result = runner.invoke(app, [*args, "--out", str(out)], env=env)
        assert result.exit_code == 0, result.output
        checked = runner.invoke(app, ["verify-report", str(out), "--key", key], env=env)
        assert checked.exit_code == 0, checked.output
        assert "OK:" in checked.output
    csv_result = runner.invoke(app, ["report", "subject", "bob", "--format", "csv"], env=env)
    assert csv_result.exit_code == 0
    assert csv_result.output.startswith("row,subject_id,")
    # One changed byte: exit 1, and the message says what failed.
    data = (tmp_path / "alice.json").read_bytes()
    position = data.index(b'"web-form"') + 1
    (tmp_path / "bad.json").write_bytes(data[:position] + b"W" + data[position + 1 :])
    failed = runner.invoke(
        app, ["verify-report", str(tmp_path / "bad.json"), "--key", key], env=env
    )
    assert failed.exit_code == 1
    assert "verification FAILED" in failed.output
    assert "content changed after signing" in failed.output
    # A CSV carries no signature: a usage error, not a pass.
    (tmp_path / "rows.csv").write_text(csv_result.output)
    usage = runner.invoke(app, ["verify-report", str(tmp_path / "rows.csv"), "--key", key], env=env)
    assert usage.exit_code == 2


# --- API ---------------------------------------------------------------------------------


def test_api_reports(ledger: ConsentLedger, tmp_path: Path) -> None:
    populate(ledger, tmp_path, rows=40)
    app = create_app(ledger=ledger)
    app.include_router(report_routes.router)
    _, audit = create_client(ledger.engine, "auditor", ["audit"])
    _, checker = create_client(ledger.engine, "checker", ["check"])
    headers = {"Authorization": f"Bearer {audit}"}
    keys = keys_of(ledger)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/v1/reports/subject/bob", headers=headers)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        verify_report(load_document(response.content), keys)
        response = client.get(
            "/v1/reports/period",
            params={"from": "2000-01-01", "verify": "false", "format": "html"},
            headers=headers,
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        verify_report(load_document(response.content), keys)
        response = client.get(
            "/v1/reports/period", params={"format": "csv", "verify": "false"}, headers=headers
        )
        assert response.status_code == 200
        assert response.text.startswith("entry,recorded,kind,")
        assert client.get("/v1/reports/subject/nobody", headers=headers).status_code == 404
        assert (
            client.get(
                "/v1/reports/subject/bob", headers={"Authorization": f"Bearer {checker}"}
            ).status_code
            == 403
        )
        assert client.get("/v1/reports/period").status_code == 401
        bad = client.get("/v1/reports/period", params={"from": "yesterday"}, headers=headers)
        assert bad.status_code == 422


# --- scale -------------------------------------------------------------------------------


@pytest.mark.slow
def test_period_report_timing(
    ledger: ConsentLedger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Measured, not asserted: set CONSENT_LEDGER_REPORT_ROWS for a bigger log."""
    rows = int(os.environ.get("CONSENT_LEDGER_REPORT_ROWS", "20000"))
    ledger.import_file(write_csv(tmp_path / "big.csv", rows), actor=ACTOR)
    started = time.perf_counter()
    document, raw = period_report(ledger, run_verify=False)
    built = time.perf_counter() - started
    data = dumps_document(document)
    started = time.perf_counter()
    verify_report(load_document(data), keys_of(ledger))
    verified = time.perf_counter() - started
    with capsys.disabled():
        sys.stdout.write(
            f"\nperiod report over {len(raw):,} entries ({ledger.engine.dialect.name}): "
            f"built in {built:.1f} s ({len(raw) / built:,.0f} entries/s), "
            f"{len(data) / 1e6:.1f} MB; verify-report {verified:.1f} s\n"
        )
