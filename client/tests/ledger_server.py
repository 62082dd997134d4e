"""A ledger's dataset endpoints played over a real socket, for the client's offline tests.

`DatasetServer` answers a build (`POST /v1/datasets/{name}/versions/{version}`)
the way the ledger's API does: one answer line written as each item line is read,
with small socket buffers, so that it stops reading while its answers are not
read. Which answers, which last line, and the JSON documents of other paths are
the test's to give (recorded from a real ledger, `data/datasets.json`).
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BUILD_PATH = re.compile(r"^/v1/datasets/[^/?]+/versions/[^/?]+(\?.*)?$")
# Small buffers: the server backs up after a few kilobytes, as a loaded one does.
BUFFER = 16 * 1024


@dataclass
class Behaviour:
    """What the server answers; every callable gets what the client sent."""

    # An item's answer line: (line number from 1, the item) -> answer.
    answer: Callable[[int, dict[str, Any]], dict[str, Any]] = lambda n, item: {
        "line": n,
        "record_id": item.get("record_id"),
        "eligible": False,
        "reason": "unknown-subject",
        "decided_by": None,
    }
    # The last line, given how many items came; None: hang up without one.
    last: Callable[[int], dict[str, Any] | None] = lambda count: {
        "error": {"status": 500, "title": "Internal server error", "detail": "no build given"}
    }
    # Answer a build at once with this status and problem, before reading it.
    refuse: tuple[int, dict[str, Any]] | None = None
    # JSON answers of other requests, by "METHOD path?query": (status, document).
    documents: dict[str, tuple[int, Any]] = field(default_factory=dict)


@dataclass
class Seen:
    """What the server was sent."""

    requests: list[str] = field(default_factory=list)
    bodies: list[Any] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)
    # Per build: whether its body ended properly (the last chunk), or was cut off.
    builds_finished: list[bool] = field(default_factory=list)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    behaviour: Behaviour
    seen: Seen

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
        super().server_bind()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass

    def do_GET(self) -> None:
        self.server.seen.requests.append(f"GET {self.path}")
        self._document(f"GET {self.path}")

    def do_POST(self) -> None:
        self.server.seen.requests.append(f"POST {self.path}")
        if BUILD_PATH.match(self.path):
            self._build()
            return
        length = int(self.headers.get("Content-Length", "0"))
        self.server.seen.bodies.append(json.loads(self.rfile.read(length) or b"null"))
        self._document(f"POST {self.path}")

    def _document(self, key: str) -> None:
        status, document = self.server.behaviour.documents.get(
            key, (404, {"status": 404, "title": "Not Found", "detail": f"nothing at {key}"})
        )
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _build(self) -> None:
        behaviour, seen = self.server.behaviour, self.server.seen
        if behaviour.refuse is not None:
            status, problem = behaviour.refuse
            body = json.dumps(problem).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/problem+json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        count = 0
        try:
            for line in self._item_lines():
                count += 1
                item = json.loads(line)
                seen.items.append(item)
                self._chunk(json.dumps(behaviour.answer(count, item)).encode() + b"\n")
        except (ConnectionError, ValueError):
            seen.builds_finished.append(False)  # cut off: a ledger records nothing
            self.close_connection = True
            return
        seen.builds_finished.append(True)
        last = behaviour.last(count)
        if last is None:
            self.close_connection = True  # hang up without the last line
            return
        self._chunk(json.dumps(last).encode() + b"\n")
        self.wfile.write(b"0\r\n\r\n")

    def _item_lines(self) -> Iterator[bytes]:
        """The request's NDJSON lines as its chunks arrive; ValueError if it is cut off."""
        pending = b""
        while True:
            size_line = self.rfile.readline()
            if not size_line:
                raise ValueError("the body ended without its last chunk")
            size = int(size_line.strip(), 16)
            if size == 0:
                self.rfile.readline()
                break
            data = self.rfile.read(size)
            if len(data) != size or self.rfile.read(2) != b"\r\n":
                raise ValueError("a chunk was cut off")
            pending += data
            *complete, pending = pending.split(b"\n")
            yield from (line for line in complete if line.strip())
        if pending.strip():
            yield pending

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))


@contextmanager
def dataset_server(behaviour: Behaviour) -> Iterator[tuple[str, Seen]]:
    """A server on a free local port: (its base URL, what it was sent)."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.behaviour, server.seen = behaviour, Seen()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
