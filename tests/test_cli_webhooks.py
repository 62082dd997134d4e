"""`consent-ledger webhooks …` (SPEC §8), both engines: add, secret, list, remove, test and
bad input in-process through `CliRunner`; `webhooks run` as a real process that delivers
and stops cleanly on SIGTERM (giving its lease up)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import standardwebhooks

from tests.cli_harness import FAILURE, USAGE, Home, cli_environment, invoke, invoke_json
from tests.webhook_receiver import Receiver, wait_for

CLI = str(Path(sys.executable).parent / "consent-ledger")


@pytest.fixture
def home(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Home:
    home = cli_environment(tmp_path, database_url, monkeypatch)
    invoke("init", "--origin", "test.example/webhooks")
    return home


def test_add_prints_the_secret_and_list_shows_the_endpoint(home: Home) -> None:
    added = invoke(
        "webhooks",
        "add",
        "platform",
        "https://platform.example/hooks",
        "--events",
        "consent.recorded",
        "-e",
        "subject.erased",
    ).stdout
    assert "platform → https://platform.example/hooks" in added
    secret = added.strip().splitlines()[-1]
    assert secret.startswith("whsec_")
    assert invoke("webhooks", "secret", "platform").stdout.strip() == secret

    (listed,) = invoke_json("webhooks", "list")
    assert listed["name"] == "platform"
    assert listed["events"] == ["consent.recorded", "subject.erased"]
    assert listed["lag"] == 0  # from now on, by default
    assert listed["last_error"] is None
    assert secret not in json.dumps(listed)
    table = invoke("webhooks", "list").stdout
    for text in ("platform", "cursor", "lag"):
        assert text in table


def test_add_with_secret_prints_only_the_secret_and_after_sets_the_cursor(home: Home) -> None:
    only = invoke("webhooks", "add", "all", "http://127.0.0.1:1/x", "--after", "0", "--secret")
    assert only.stdout.strip().startswith("whsec_")
    assert len(only.stdout.strip().splitlines()) == 1
    (listed,) = invoke_json("webhooks", "list")
    assert listed["events"] == []
    assert listed["cursor"] == 0
    assert listed["lag"] > 0
    added = invoke_json("webhooks", "add", "json", "https://x.example/")
    assert added["secret"].startswith("whsec_")


def test_remove_forgets_the_endpoint(home: Home) -> None:
    invoke("webhooks", "add", "platform", "https://platform.example/hooks")
    assert "webhook platform removed" in invoke("webhooks", "remove", "platform").stdout
    assert invoke_json("webhooks", "list") == []
    gone = invoke("webhooks", "remove", "platform", code=FAILURE)
    assert "no webhook endpoint named 'platform'" in gone.output


def test_test_sends_one_signed_delivery_and_reports_the_answer(home: Home) -> None:
    with Receiver(["ok", "500"]) as receiver:
        secret = invoke("webhooks", "add", "platform", receiver.url, "--secret").stdout.strip()
        ok = invoke("webhooks", "test", "platform").stdout
        assert "OK" in ok
        assert "HTTP 204" in ok
        request = receiver.received()[0]
        document = standardwebhooks.Webhook(secret).verify(request.body, request.headers)
        assert document["type"] == "consent-ledger.test"
        failed = invoke("webhooks", "test", "platform", code=FAILURE)
        assert "FAILED" in failed.output
        assert "HTTP 500" in failed.output
    refused = invoke("webhooks", "test", "platform", "--json", code=FAILURE)
    result = json.loads(refused.stdout)
    assert result["ok"] is False
    assert result["status"] is None
    assert result["error"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("bad name", "https://x.example/"), "name: must be 1-64 characters"),
        (("ok", "ftp://x.example/"), "url: must be http:// or https://"),
        (("ok", "https://"), "url: has no host"),
        (("ok", "http://x.example:99999/"), "url: not a URL"),
        (("ok", "https://x.example/", "--events", "consent.nope"), "unknown event kind"),
        (("ok", "https://x.example/", "--after", "100000"), "after: must be a tree size"),
        (("ok", "https://x.example/", "--after", "-3"), "after: must be a tree size"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(home: Home, args: tuple[str, ...], message: str) -> None:
    result = invoke("webhooks", "add", *args, code=USAGE)
    assert message in result.output
    assert "Traceback" not in result.output
    assert invoke_json("webhooks", "list") == []


def test_a_name_taken_or_unknown_is_a_one_line_failure(home: Home) -> None:
    invoke("webhooks", "add", "platform", "https://x.example/")
    taken = invoke("webhooks", "add", "platform", "https://y.example/", code=FAILURE)
    assert "already exists" in taken.output
    for command in ("secret", "test", "remove"):
        unknown = invoke("webhooks", command, "nobody", code=FAILURE)
        assert "no webhook endpoint named 'nobody'" in unknown.output
        assert "Traceback" not in unknown.output


def test_run_delivers_in_the_foreground_until_sigterm(home: Home) -> None:
    env = {
        **os.environ,
        "CONSENT_LEDGER_WEBHOOK_RETRY_BASE_SECONDS": "0.05",
        "CONSENT_LEDGER_WEBHOOK_POLL_SECONDS": "0.1",
    }
    with Receiver() as receiver:
        invoke("webhooks", "add", "platform", receiver.url, "--after", "0")
        process = subprocess.Popen(
            [CLI, "webhooks", "run"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            size = invoke_json("checkpoint")["tree_size"]
            wait_for(lambda: receiver.event_seqs() == list(range(size)), what="`webhooks run`")
            invoke("subject", "register", "alice")
            wait_for(lambda: receiver.event_seqs() == list(range(size + 1)), what="the new entry")
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr
        assert "stopped" in stderr
        assert "Traceback" not in stderr
        # It gave the lease up on its way out.
        assert home.scalar("SELECT holder FROM webhook_lease") is None
        receiver.verify_all(invoke("webhooks", "secret", "platform").stdout.strip())
