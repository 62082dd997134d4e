"""The change feed's NDJSON stream against a real `consent-ledger serve --workers 2`.

The stream is read line by line while other processes (the CLI, writing straight to the
database) append: their events arrive within a second, each batch ends with a line whose
range proof proves the batch into a signed checkpoint (checked with the verifier key
alone), batches chain cursor to cursor, and an idle stream sends heartbeats.
"""

from __future__ import annotations

import base64
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import orjson
import pytest

from ledger.tlog import merkle
from ledger.tlog.notes import VerifierKey, open_checkpoint
from tests.e2e.conftest import Deployment, line_after, run_cli

pytestmark = pytest.mark.slow

ORIGIN = "e2e.example/ledger"
NDJSON = "application/x-ndjson"
HEARTBEAT = 15.0  # SPEC §8: a heartbeat at least this often while idle


def feed_key(deployment: Deployment) -> str:
    made = run_cli(deployment.env, "clients", "create", "feed-reader", "--scope", "feed")
    assert made.returncode == 0, made.stdout + made.stderr
    key = line_after(made.stdout, "API key")
    assert key.startswith("clk_"), made.stdout
    return key


def cli(deployment: Deployment, *args: str) -> float:
    """Run a CLI command (its own process, writing to the database); when it finished."""
    done = run_cli(deployment.env, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return time.monotonic()


class Stream:
    """The lines of an NDJSON feed stream, read in a thread, each with when it arrived."""

    def __init__(self) -> None:
        self.lines: queue.Queue[tuple[float, dict[str, Any]] | BaseException] = queue.Queue()

    def next(self, timeout: float) -> tuple[float, dict[str, Any]]:
        try:
            item = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line from the stream within {timeout} s") from None
        if isinstance(item, BaseException):
            raise AssertionError(f"the stream failed: {item!r}") from item
        return item

    def content(self, batches: Batches, timeout: float) -> tuple[float, dict[str, Any]]:
        """The next event or batch end; heartbeats (a CLI under load can take longer than
        their interval to start) are checked and passed over."""
        deadline = time.monotonic() + timeout
        while True:
            arrived, line = self.next(max(deadline - time.monotonic(), 0.01))
            if "seq" in line or "checkpoint" in line:
                return arrived, line
            batches.take(line)


@contextmanager
def stream(deployment: Deployment, key: str, after: int) -> Iterator[Stream]:
    found = Stream()
    opened = threading.Event()
    stop = threading.Event()

    def read() -> None:
        try:
            with (
                httpx.Client(base_url=deployment.base, timeout=httpx.Timeout(60.0)) as client,
                client.stream(
                    "GET",
                    "/v1/changes",
                    params={"after": after},
                    headers={"Authorization": f"Bearer {key}", "Accept": NDJSON},
                ) as response,
            ):
                assert response.status_code == 200, response.read()
                assert response.headers["content-type"].startswith(NDJSON)
                opened.set()
                for line in response.iter_lines():
                    if stop.is_set():
                        return
                    if line:
                        found.lines.put((time.monotonic(), orjson.loads(line)))
        except BaseException as exc:  # handed to the reader of the lines
            found.lines.put(exc)
            opened.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    assert opened.wait(30), "the stream did not open"
    try:
        yield found
    finally:
        stop.set()
        thread.join(timeout=HEARTBEAT + 5)


def tree_size(deployment: Deployment, key: str) -> int:
    response = httpx.get(
        deployment.base + "/v1/changes",
        params={"after": 0, "limit": 1},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    size: int = response.json()["tree_size"]
    return size


class Batches:
    """Checks the stream's lines as a client must: events in order from the cursor, each
    batch end proving the events since the previous one into a signed checkpoint."""

    def __init__(self, deployment: Deployment, after: int) -> None:
        self.verifier = [VerifierKey.parse(deployment.verifier_key)]
        self.cursor = after
        self.pending: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.heartbeats: list[dict[str, Any]] = []

    def take(self, line: dict[str, Any]) -> None:
        if "seq" in line:
            assert line["seq"] == self.cursor + len(self.pending), line
            self.pending.append(line)
            return
        if "checkpoint" not in line:
            assert set(line) == {"next"}, line
            assert line["next"] == self.cursor, line
            assert not self.pending, line
            self.heartbeats.append(line)
            return
        assert line["next"] == self.cursor + len(self.pending), line
        checkpoint = open_checkpoint(line["checkpoint"], self.verifier, origin=ORIGIN)
        assert checkpoint.size == line["tree_size"] >= line["next"]
        leaves = [merkle.leaf_hash(base64.b64decode(e["canonical"])) for e in self.pending]
        proof = [base64.b64decode(node) for node in line["proof"]]
        merkle.verify_range(self.cursor, leaves, checkpoint.size, proof, checkpoint.root)
        self.events += self.pending
        self.pending = []
        self.cursor = line["next"]


def test_a_stream_delivers_other_processes_writes_within_a_second_proven(
    deployment: Deployment,
) -> None:
    key = feed_key(deployment)
    size = tree_size(deployment, key)
    batches = Batches(deployment, size)
    with stream(deployment, key, size) as lines:
        time.sleep(0.5)  # the stream is waiting at the end of the log

        written = cli(deployment, "subject", "register", "u1", "--jurisdiction", "US")
        arrived, line = lines.content(batches, timeout=10)
        assert line.get("kind") == "subject.registered", line
        assert line["subject_id"] == "u1"
        assert line["effect"], line
        assert arrived - written < 1.0, f"the event came {arrived - written:.2f} s after"
        batches.take(line)
        _, end = lines.content(batches, timeout=5)
        batches.take(end)

        written = cli(deployment, "consent", "withdraw", "u1", "content.public")
        arrived, line = lines.content(batches, timeout=10)
        assert arrived - written < 1.0, f"the event came {arrived - written:.2f} s after"
        assert line["kind"] == "consent.recorded"
        assert {(e["category"], e["eligible"], e["reason"]) for e in line["effect"]} == {
            ("content.public", False, "withdrawn")
        }
        batches.take(line)
        batches.take(lines.content(batches, timeout=5)[1])

        written = cli(deployment, "subject", "erase", "u1")
        arrived, line = lines.content(batches, timeout=10)
        assert arrived - written < 1.0, f"the event came {arrived - written:.2f} s after"
        assert (line["kind"], line["subject_id"]) == ("subject.erased", None)
        assert line["effect"]
        assert all(e["reason"] == "erased" for e in line["effect"])
        batches.take(line)
        batches.take(lines.content(batches, timeout=5)[1])
    assert [e["kind"] for e in batches.events] == [
        "subject.registered",
        "consent.recorded",
        "subject.erased",
    ]


def test_a_stream_from_the_start_replays_then_follows_in_proven_batches(
    deployment: Deployment,
) -> None:
    key = feed_key(deployment)
    for number in range(3):
        cli(deployment, "subject", "register", f"early-{number}", "--jurisdiction", "DE")
    batches = Batches(deployment, 0)
    with stream(deployment, key, 0) as lines:
        while batches.cursor < tree_size(deployment, key) or batches.pending:
            batches.take(lines.content(batches, timeout=10)[1])
        # Writers racing each other: several batches, or one, but every event once, in order.
        writers = [
            threading.Thread(
                target=cli, args=(deployment, "subject", "register", f"late-{n}"), daemon=True
            )
            for n in range(4)
        ]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(timeout=120)
        final = tree_size(deployment, key)
        while batches.cursor < final or batches.pending:
            batches.take(lines.content(batches, timeout=10)[1])
    assert [e["seq"] for e in batches.events] == list(range(final))
    registered = [e["subject_id"] for e in batches.events if e["kind"] == "subject.registered"]
    assert sorted(registered) == sorted(
        [*(f"early-{n}" for n in range(3)), *(f"late-{n}" for n in range(4))]
    )


def test_an_idle_stream_sends_heartbeats(deployment: Deployment) -> None:
    key = feed_key(deployment)
    size = tree_size(deployment, key)
    batches = Batches(deployment, size)
    with stream(deployment, key, size) as lines:
        started = time.monotonic()
        first, line = lines.next(timeout=HEARTBEAT + 3)
        assert line == {"next": size}, line
        assert first - started <= HEARTBEAT + 1.0
        batches.take(line)
        second, line = lines.next(timeout=HEARTBEAT + 3)
        assert line == {"next": size}, line
        batches.take(line)
        # A write after heartbeats still arrives.
        cli(deployment, "subject", "register", "after-heartbeat")
        _, line = lines.next(timeout=10)
        assert line["seq"] == size
        batches.take(line)
        batches.take(lines.next(timeout=5)[1])
    assert len(batches.events) == 1
    # SPEC §8: "at least every 15 s", so no silence longer than that (a proxy or client
    # with a 15 s idle timeout must not drop the stream).
    assert second - first <= HEARTBEAT, f"{second - first:.3f} s between heartbeats"


def test_a_stream_refuses_bad_input_before_it_starts(deployment: Deployment) -> None:
    key = feed_key(deployment)
    size = tree_size(deployment, key)
    headers = {"Authorization": f"Bearer {key}", "Accept": NDJSON}
    for params, field in (({"after": size + 5}, "after"), ({"limit": 0}, "limit")):
        response = httpx.get(
            deployment.base + "/v1/changes", params=params, headers=headers, timeout=30
        )
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert field in [error["field"] for error in response.json().get("errors", [])]
    response = httpx.get(
        deployment.base + "/v1/changes",
        headers={**deployment.headers("read"), "Accept": NDJSON},
        timeout=30,
    )
    assert response.status_code == 403, response.text
