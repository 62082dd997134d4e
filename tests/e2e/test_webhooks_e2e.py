"""Webhooks from a real deployment (SPEC §8): `serve --workers 2` delivers, one worker
elected; SIGKILL of the whole server in the middle of a delivery, a restart, and the
receiver still ends up with every event exactly once (after de-duplication by
`webhook-id`), in order, the interrupted batch sent again under the same id."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import standardwebhooks

from ledger.demo import write_csv
from tests.e2e.conftest import Deployment, deploy, run_cli
from tests.webhook_receiver import Receiver, wait_for

pytestmark = pytest.mark.slow

FAST = {
    "CONSENT_LEDGER_WEBHOOK_RETRY_BASE_SECONDS": "0.1",
    "CONSENT_LEDGER_WEBHOOK_RETRY_CAP_SECONDS": "1",
    "CONSENT_LEDGER_WEBHOOK_TIMEOUT_SECONDS": "5",
    "CONSENT_LEDGER_WEBHOOK_BATCH_EVENTS": "5",
    "CONSENT_LEDGER_WEBHOOK_LEASE_SECONDS": "2",
    "CONSENT_LEDGER_WEBHOOK_POLL_SECONDS": "0.2",
}


def cli_json(deployment: Deployment, *args: str) -> object:
    done = run_cli(deployment.env, *args, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_sigkill_mid_delivery_then_restart_skips_nothing(database_url: str, tmp_path: Path) -> None:
    deployment = deploy(database_url, tmp_path, FAST)
    try:
        rows = write_csv(tmp_path / "consents.csv", 60)
        imported = run_cli(deployment.env, "import", str(rows))
        assert imported.returncode == 0, imported.stdout + imported.stderr
        size = cli_json(deployment, "checkpoint")["tree_size"]  # type: ignore[index]
        assert size > 40
        # The ninth delivery is held open until the server is dead.
        with Receiver(["ok"] * 8 + ["block"]) as receiver:
            added = run_cli(
                deployment.env, "webhooks", "add", "platform", receiver.url, "--after", "0"
            )
            assert added.returncode == 0, added.stderr
            secret = added.stdout.strip().splitlines()[-1]
            assert receiver.blocked.wait(60), "no delivery reached the receiver:\n" + (
                deployment.log()
            )
            blocked = receiver.received()[-1]
            assert deployment.process is not None
            os.killpg(deployment.process.pid, signal.SIGKILL)
            deployment.process.wait(timeout=10)
            receiver.release()

            (listed,) = cli_json(deployment, "webhooks", "list")  # type: ignore[misc]
            assert 0 < listed["cursor"] < size, listed
            deployment.start()
            wait_for(
                lambda: receiver.event_seqs() == list(range(size)),
                timeout=120,
                what="every event after the restart",
            )
            (listed,) = cli_json(deployment, "webhooks", "list")  # type: ignore[misc]
            assert listed["cursor"] == size
            assert listed["lag"] == 0
            assert listed["pending"] is None

            arrivals = receiver.received()
            # The interrupted batch came again after the restart, under the same id.
            again = [r for r in arrivals if r.webhook_id == blocked.webhook_id]
            assert len(again) == 2
            assert again[1].seqs() == blocked.seqs()
            webhook = standardwebhooks.Webhook(secret)
            for request in arrivals:
                webhook.verify(request.body, request.headers)
            # One deliverer among the two workers: nothing else arrived twice.
            assert len(arrivals) == len(receiver.deliveries()) + 1
    finally:
        deployment.stop()
