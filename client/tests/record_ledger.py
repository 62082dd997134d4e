"""Record a real ledger's answers for the client's offline tests: writes `data/ledger.json`.

Needs the server, so it runs in the project's virtualenv, from the repository
root: `.venv/bin/python client/tests/record_ledger.py`. It starts the API
in-process on a throwaway SQLite ledger, runs `session.run` (the calls the
offline tests replay) through the real client, and keeps every request and
answer, keyed as `session.exchange_key` keys them. It adds every consistency
proof between the sizes seen, a checkpoint of another history signed by the
ledger's key, and a checkpoint of the right log signed by another key.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import httpx
import orjson

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from api.app import create_app
from consent_ledger_client import ConsentLedgerClient
from ledger.service import ConsentLedger
from ledger.service.clients import create_client
from ledger.service.keys import SigningKey
from ledger.settings import Settings
from ledger.tlog.notes import Checkpoint, VerifierKey, sign_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
import session  # noqa: E402  (this directory, as pytest's `pythonpath` has it)

OUTPUT = Path(__file__).resolve().parent / "data" / "ledger.json"
ORIGIN = "recorded.example/ledger"


class Recorder(httpx.BaseTransport):
    """Forwards to the app and keeps each answer under its request's key."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.exchanges: dict[str, dict[str, Any]] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        response.read()
        key = session.exchange_key(request)
        answer = {
            "status": response.status_code,
            "content_type": response.headers.get("content-type", ""),
            "body": response.text,
        }
        if self.exchanges.setdefault(key, answer) != answer:
            raise RuntimeError(
                f"{key} was answered differently twice: the replay would be ambiguous"
            )
        return response


def record(home: Path) -> dict[str, Any]:
    settings = Settings(home=home, database_url=f"sqlite:///{home / 'ledger.db'}")
    ledger, _ = ConsentLedger.initialize(settings, origin=ORIGIN, actor="recorder")
    try:
        _, api_key = create_client(
            ledger.engine, "recorder", ["check", "record", "read", "audit", "admin"]
        )
        verifier_key = ledger.verifier_key()
        with TestClient(create_app(ledger=ledger), base_url=session.BASE_URL) as app:
            recorder = Recorder(app._transport)
            http = httpx.Client(transport=recorder, base_url=session.BASE_URL)

            def elsewhere(subject_id: str) -> None:
                ledger.register_subject(subject_id, jurisdiction="DE", actor="elsewhere")

            client = ConsentLedgerClient(session.BASE_URL, api_key, verifier_key, http=http)
            outcome = session.run(client, elsewhere=elsewhere)
            size = outcome.checkpoint.size
            for old in range(1, size):
                for new in range(old + 1, size + 1):
                    answer = http.get(
                        session.PROOF_PATH,
                        params={"old_size": old, "new_size": new},
                        headers={"Authorization": f"Bearer {api_key}"},
                    )
                    answer.raise_for_status()

        forged_at = outcome.receipts["user-1 content.public"].token
        forged = Checkpoint(ORIGIN, forged_at, hashlib.sha256(b"another history").digest())
        genuine = outcome.receipts["user-1 content.public"].checkpoint
        assert genuine is not None
        impostor = SigningKey.generate(VerifierKey.parse(verifier_key).name)
        return {
            "about": (
                "Answers of a real consent-ledger API to the calls of session.run, keyed by "
                "session.exchange_key; written by client/tests/record_ledger.py."
            ),
            "verifier_key": verifier_key,
            "forged_checkpoint": sign_checkpoint(forged, [ledger.signing_key()]),
            "impostor_key": str(impostor.verifier_key),
            "impostor_checkpoint": sign_checkpoint(
                Checkpoint(ORIGIN, genuine.size, genuine.root), [impostor]
            ),
            "exchanges": dict(sorted(recorder.exchanges.items())),
        }
    finally:
        ledger.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        document = record(Path(home))
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")


if __name__ == "__main__":
    main()
