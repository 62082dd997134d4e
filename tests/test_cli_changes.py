"""`consent-ledger changes`: the change feed on the command line (SPEC §8), both engines.

In-process through `CliRunner` for pages and errors; `--follow` as a real process
that must print an event another process commits, within a second or two.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ledger.service import ConsentLedger, cli_actor
from ledger.settings import Settings
from tests.cli_harness import USAGE, Home, cli_environment, invoke

CLI = str(Path(sys.executable).parent / "consent-ledger")


@pytest.fixture
def home(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Home:
    home = cli_environment(tmp_path, database_url, monkeypatch)
    invoke("init", "--origin", "test.example/changes")
    invoke("subject", "register", "alice", "--jurisdiction", "US")
    invoke("consent", "grant", "alice", "content.public", "--purpose", "ai-training")
    invoke("consent", "withdraw", "alice", "content.public", "--purpose", "ai-training")
    invoke("subject", "register", "bob", "--jurisdiction", "DE")
    invoke("subject", "erase", "bob")
    return home


def events(*args: str) -> list[dict[str, Any]]:
    output = invoke("changes", "--json", *args).stdout
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_changes_lists_every_entry_with_its_effect(home: Home) -> None:
    listed = events()
    assert [event["seq"] for event in listed] == list(range(len(listed)))
    kinds = [event["kind"] for event in listed]
    assert kinds[:2] == ["ledger.initialized", "policy.published"]
    withdrawal = next(e for e in listed if e.get("decision") == "withdrawn")
    assert withdrawal["subject_id"] == "alice"
    assert {"category": "content.public", "purpose": "ai-training"} | {
        "eligible": False,
        "reason": "withdrawn",
    } in withdrawal["effect"]
    erasure = listed[-1]
    assert erasure["kind"] == "subject.erased"
    assert erasure["subject_id"] is None
    assert erasure["subject"]
    # bob (Germany, default-deny for AI training) had nothing eligible to lose there.
    assert all(item["reason"] == "erased" for item in erasure["effect"])


def test_changes_after_a_cursor_prints_only_what_follows(home: Home) -> None:
    everything = events()
    later = events("--after", str(len(everything) - 2))
    assert later == everything[-2:]
    assert events("--after", str(len(everything))) == []


def test_changes_human_output_names_who_what_and_what_it_turned(home: Home) -> None:
    output = invoke("changes").stdout
    assert "withdrawn content.public for ai-training" in output
    assert "not eligible (withdrawn): content.public×ai-training" in output
    assert "(erased; ref " in output
    assert "next cursor:" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--after", "999999"), "beyond the log"),
        (("--after", "-1"), "greater than or equal to 0"),
        (("--after", "x"), "valid integer"),
    ],
)
def test_changes_refuses_bad_cursors(home: Home, args: tuple[str, ...], message: str) -> None:
    result = invoke("changes", *args, code=USAGE)
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_follow_prints_an_event_committed_by_another_process(home: Home) -> None:
    size = len(events())
    follower = subprocess.Popen(
        # From the last event there is: its line says the follower is up and at the head.
        [CLI, "changes", "--follow", "--json", "--after", str(size - 1)],
        env={**os.environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert follower.stdout is not None
        stdout = follower.stdout
        assert json.loads(stdout.readline())["seq"] == size - 1
        lines: list[bytes] = []
        reader = threading.Thread(target=lambda: lines.append(stdout.readline()))
        reader.start()
        ledger = ConsentLedger(Settings(home=home.path, database_url=home.database_url))
        try:
            written_at = time.monotonic()
            ledger.register_subject("carol", jurisdiction="US", actor=cli_actor())
        finally:
            ledger.close()
        reader.join(timeout=10)
        seen_after = time.monotonic() - written_at
        assert lines, "the follower printed nothing"
        assert lines[0], follower.stderr.read() if follower.stderr else b""
        event = json.loads(lines[0])
        assert event["seq"] == size
        assert event["subject_id"] == "carol"
        # Generous for a loaded test machine: the follower looks every 0.1 s.
        assert seen_after < 3.0
    finally:
        follower.terminate()
        follower.wait(timeout=10)
