"""The API, the CLI and the reports reach the ledger only through `ConsentLedger`.

They must not open sessions, use the engine or the key store, or import the
storage layer and the service's internals: whatever they need is a method of
the facade (issue #12). This reads their sources, so the rule holds as they grow.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("api", "cli", "ledger/reports")
FORBIDDEN = {
    "the engine": r"\.engine\b",
    "the key store": r"\.keys\.",
    "the API key cache": r"\.api_keys\b",
    "a read session": r"\bread_session\b",
    "a write session": r"\bwrite_session\b",
    "the storage layer": r"\bledger\.store\b",
    "the API clients' storage": r"\bledger\.service\.clients\b",
    "the key files": r"\bledger\.service\.keys\b",
}


def _sources() -> list[Path]:
    return sorted(path for layer in LAYERS for path in (ROOT / layer).rglob("*.py"))


def test_the_layers_have_sources_to_check() -> None:
    assert len(_sources()) > 20


@pytest.mark.parametrize("what", sorted(FORBIDDEN))
def test_api_cli_and_reports_never_reach_past_the_facade(what: str) -> None:
    pattern = re.compile(FORBIDDEN[what])
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _sources()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, f"{what} used outside the facade:\n" + "\n".join(hits)
