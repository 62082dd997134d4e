"""Record a real ledger's answers for the client's offline tests: writes `data/ledger.json`
and `data/datasets.json`.

Needs the server, so it runs in the project's virtualenv, from the repository
root: `.venv/bin/python client/tests/record_ledger.py`. It starts the API
in-process on a throwaway SQLite ledger, runs `session.run` (the calls the
offline tests replay) through the real client, and keeps every request and
answer, keyed as `session.exchange_key` keys them. It adds every consistency
proof between the sizes seen, a checkpoint of another history signed by the
ledger's key, and a checkpoint of the right log signed by another key.

`data/changes.json` holds pages of the change feed (SPEC §8), each the `to_json()`
of the ledger's own page (what `GET /v1/changes` sends): after every cursor, two
entries at a time and to the head, a page filtered by kind (as a webhook endpoint
subscribed to some kinds gets it), and a checkpoint of another history at the
head's size signed by the ledger's key.

`data/datasets.json` holds what a ledger answers about datasets (SPEC §7): a
build's answer lines and its last line, obligation pages, a purge and member
proofs, each the `to_json()` of the ledger's own result (the documents its API
sends), made on another throwaway ledger.
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
from ledger.consent.decisions import DecisionRequest
from ledger.demo import demo_policy_change
from ledger.service import BuildItem, ConsentLedger
from ledger.service.clients import create_client
from ledger.service.keys import SigningKey
from ledger.settings import Settings
from ledger.tlog.notes import Checkpoint, VerifierKey, sign_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
import session  # noqa: E402  (this directory, as pytest's `pythonpath` has it)

OUTPUT = Path(__file__).resolve().parent / "data" / "ledger.json"
DATASETS = OUTPUT.with_name("datasets.json")
CHANGES = OUTPUT.with_name("changes.json")
# The kinds of the filtered page: what a platform that acts on withdrawals subscribes to.
CHANGE_KINDS = frozenset({"consent.recorded", "subject.erased"})
ORIGIN = "recorded.example/ledger"
# us-1, us-2: US opt-out defaults; de-1: GDPR, granted public posts; de-2: GDPR, never asked.
DATASET_SUBJECTS = (("us-1", "US"), ("us-2", "US"), ("de-1", "DE"), ("de-2", "DE"))
BUILD_ITEMS = [
    ["post-1", "us-1", "content.public"],
    ["post-2", "de-2", "content.public"],
    ["post-3", "de-1", "content.public"],
    ["post-4", "us-2", "content.private"],
    ["post-5", "us-2", "content.public"],
    ["post-6", "nobody", "content.public"],
    ["post-7", "us-1", ["content.public", "profile"]],
    ["post-8", "us-2", "no.such.category"],
]


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


def record_datasets(home: Path) -> dict[str, Any]:
    """A build of `BUILD_ITEMS` as posts-train@1 (and of three of them as @2), a
    withdrawal that opens obligations, their pages, member proofs, then a purge."""
    settings = Settings(home=home, database_url=f"sqlite:///{home / 'ledger.db'}")
    ledger, _ = ConsentLedger.initialize(settings, origin=ORIGIN, actor="recorder")
    actor = "recorder"
    try:
        for subject_id, jurisdiction in DATASET_SUBJECTS:
            ledger.register_subject(subject_id, jurisdiction=jurisdiction, actor=actor)
        ledger.record_consents(
            "de-1", [DecisionRequest(category="content.public", decision="granted")], actor=actor
        )
        builds = {}
        for version, items in (("1", BUILD_ITEMS), ("2", BUILD_ITEMS[:3])):
            with ledger.dataset_recorder("posts-train", version, actor=actor) as recorder:
                answers = recorder.check(
                    [BuildItem(line, *item) for line, item in enumerate(items, start=1)]
                )
                builds[version] = {
                    "items": items,
                    "answers": [answer.to_json() for answer in answers],
                    "last": recorder.finish().to_json(),
                }
        ledger.record_consents(
            "us-1", [DecisionRequest(category="*", decision="withdrawn")], actor=actor
        )
        pages, after = [], None
        while True:
            page = ledger.obligations("posts-train", version="1", after=after, limit=1)
            pages.append({"after": after, "page": page})
            if page["next"] is None:
                break
            after = page["next"]
        proofs = {
            "post-3": ledger.member_proof("posts-train", "1", "post-3"),
            "post-7": ledger.member_proof("posts-train", "1", "post-7"),
            "other-build": ledger.member_proof("posts-train", "2", "post-3"),
        }
        purged = ["post-7", "post-5", "post-1"]
        purge = ledger.purge_records("posts-train", "1", purged, actor=actor)
        return {
            "about": (
                "What a real consent-ledger answers about datasets (SPEC §7), as its API "
                "sends it; written by client/tests/record_ledger.py."
            ),
            "verifier_key": ledger.verifier_key(),
            "builds": builds,
            "obligation_pages": pages,
            "proofs": proofs,
            "purge": {"record_ids": purged, "answer": purge.to_json()},
        }
    finally:
        ledger.close()


def record_changes(home: Path) -> dict[str, Any]:
    """Subjects, a decision, a build, a withdrawal that opens an obligation, an erasure and
    a policy change, then the feed's pages over all of it."""
    settings = Settings(home=home, database_url=f"sqlite:///{home / 'ledger.db'}")
    ledger, _ = ConsentLedger.initialize(settings, origin=ORIGIN, actor="recorder")
    actor = "recorder"
    try:
        for subject_id, jurisdiction in DATASET_SUBJECTS:
            ledger.register_subject(subject_id, jurisdiction=jurisdiction, actor=actor)
        ledger.record_consents(
            "de-1", [DecisionRequest(category="content.public", decision="granted")], actor=actor
        )
        with ledger.dataset_recorder("posts-train", "1", actor=actor) as recorder:
            recorder.check(
                [BuildItem(line, *item) for line, item in enumerate(BUILD_ITEMS[:3], start=1)]
            )
            recorder.finish()
        ledger.record_consents(
            "us-1", [DecisionRequest(category="*", decision="withdrawn")], actor=actor
        )
        ledger.erase_subject("us-2", actor=actor)
        ledger.publish_policy(demo_policy_change(ledger.current_policy()), actor=actor)
        size = ledger.tree_size()
        pages = {
            f"{after}/{limit}": ledger.changes(after, limit).to_json()
            for limit in (2, 1000)
            for after in range(size + 1)
        }
        filtered = ledger.changes(0, 1000, kinds=CHANGE_KINDS).to_json()
        forged = Checkpoint(ORIGIN, size, hashlib.sha256(b"another history").digest())
        return {
            "about": (
                "Pages of a real consent-ledger's change feed (SPEC §8), keyed AFTER/LIMIT, "
                "as its API sends them; written by client/tests/record_ledger.py."
            ),
            "verifier_key": ledger.verifier_key(),
            "tree_size": size,
            "pages": pages,
            "filtered": {"kinds": sorted(CHANGE_KINDS), "page": filtered},
            "forged_checkpoint": sign_checkpoint(forged, [ledger.signing_key()]),
        }
    finally:
        ledger.close()


def main() -> None:
    """Record every file, or only those named (`changes.json` …) on the command line."""
    OUTPUT.parent.mkdir(exist_ok=True)
    wanted = set(sys.argv[1:])
    for output, make in (
        (OUTPUT, record),
        (DATASETS, record_datasets),
        (CHANGES, record_changes),
    ):
        if wanted and output.name not in wanted:
            continue
        with tempfile.TemporaryDirectory() as home:
            document = make(Path(home))
        output.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")


if __name__ == "__main__":
    main()
