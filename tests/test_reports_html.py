"""HTML reports: self-contained, checked by verify-report, rendered by headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ledger.consent.decisions import DecisionRequest
from ledger.demo import demo_policy_change, write_csv
from ledger.errors import VerificationError
from ledger.reports import load_document, period_report, subject_report, verify_report
from ledger.reports.html import render_html
from ledger.service import ConsentLedger
from ledger.tlog.notes import VerifierKey

ACTOR = "test"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def seed(ledger: ConsentLedger, tmp_path: Path) -> None:
    """A `demo seed`-like population (import, policy change half-way, import) plus alice."""
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    write_csv(first, 300)
    write_csv(second, 300, seed=7)
    ledger.import_file(first, actor=ACTOR)
    ledger.publish_policy(demo_policy_change(ledger.current_policy()), actor=ACTOR)
    ledger.import_file(second, actor=ACTOR)
    ledger.register_subject("alice", jurisdiction="DE", actor=ACTOR)
    ledger.record_consents(
        "alice",
        [
            DecisionRequest("content.public", "granted", method="web-form", notice="privacy-v3"),
            DecisionRequest("biometric.face", "granted", explicit=True, method="web-form"),
            DecisionRequest("*", "denied", purpose="ai-training.generative", method="mobile-app"),
        ],
        actor=ACTOR,
    )


def pages(ledger: ConsentLedger) -> dict[str, str]:
    signer = ledger.signing_key()
    document, _ = period_report(ledger, run_verify=False)
    return {
        "subject": render_html(subject_report(ledger, "alice"), signer),
        "period": render_html(document, signer),
    }


def test_html_reports_verify_and_are_self_contained(ledger: ConsentLedger, tmp_path: Path) -> None:
    seed(ledger, tmp_path)
    keys = [VerifierKey.parse(ledger.verifier_key())]
    for kind, page in pages(ledger).items():
        result = verify_report(load_document(page.encode()), keys)
        assert result.kind == kind
        assert any("HTML page signed" in line for line in result.checks)
        # Nothing is fetched: no external resources, no scripts that run.
        assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page)
        assert "<link" not in page
        assert "<img" not in page
        assert len(re.findall(r"<script", page)) == 1
        assert '<script type="application/json"' in page
        assert "Content-Security-Policy" in page
        if kind == "period":
            assert page.count("<svg") == 3  # decisions, rates, eligibility share


@pytest.mark.parametrize(
    ("where", "message"),
    [("visible", "page was changed after signing"), ("embedded", "content changed")],
)
def test_one_changed_byte_of_html_fails(
    ledger: ConsentLedger, tmp_path: Path, where: str, message: str
) -> None:
    seed(ledger, tmp_path)
    page = pages(ledger)["subject"]
    if where == "visible":
        position = page.index("What this person allows") + 5
    else:
        position = page.index('"web-form"', page.index('id="consent-ledger-report"')) + 1
    tampered = page[:position] + chr(ord(page[position]) ^ 1) + page[position + 1 :]
    with pytest.raises(VerificationError, match=message):
        verify_report(load_document(tampered.encode()), [VerifierKey.parse(ledger.verifier_key())])


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)"
)
@pytest.mark.parametrize("engine", ["sqlite"])
def test_html_reports_render_in_headless_chromium(
    ledger: ConsentLedger, tmp_path: Path, engine: str
) -> None:
    if ledger.engine.dialect.name != engine:
        pytest.skip("the rendering does not depend on the database: once is enough")
    seed(ledger, tmp_path)
    assert CHROMIUM is not None
    for kind, page in pages(ledger).items():
        html_file = tmp_path / f"{kind}.html"
        html_file.write_text(page, encoding="utf-8")
        png = tmp_path / f"{kind}.png"
        subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={tmp_path / ('chromium-' + kind)}",
                f"--screenshot={png}",
                "--window-size=1280,1600",
                html_file.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(data) > 50_000, f"{kind}: the screenshot looks blank"
