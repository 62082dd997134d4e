"""A webhook receiver for the tests: a small threaded HTTP server that fails as told.

Each request takes the next behaviour from a script (then `then` for ever after):
- "ok": answer 204 at once;
- "500": answer 500;
- "slow": wait `slow` seconds, then answer 200 (within the deliverer's time limit);
- "timeout": wait `hang` seconds (past the deliverer's time limit), then answer 200;
- "close": close the connection without answering;
- "block": hold the request until `release()` (then answer 200).
Every request whose body arrived is kept (`requests`), whatever it was answered: a
receiver that answers too late has still received the delivery, as a real one would,
and de-duplicating by `webhook-id` is the receiver's job.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import standardwebhooks


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    behaviour: str
    at: float  # time.monotonic()

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def document(self) -> Any:
        return json.loads(self.body)

    def seqs(self) -> list[int]:
        return [event["seq"] for event in self.document()["data"].get("events", [])]


class Receiver:
    def __init__(
        self,
        script: Iterable[str] = (),
        *,
        then: str = "ok",
        slow: float = 0.3,
        hang: float = 3.0,
    ) -> None:
        self._script = list(script)
        self.then = then
        self.slow = slow
        self.hang = hang
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self.blocked = threading.Event()  # set while a "block" request is held
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/hooks/consent"

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def release(self) -> None:
        self._released.set()

    def script(self, behaviours: Iterable[str], then: str | None = None) -> None:
        with self._lock:
            self._script = list(behaviours)
            if then is not None:
                self.then = then

    def _next(self) -> str:
        with self._lock:
            return self._script.pop(0) if self._script else self.then

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length", "0"))
        body = handler.rfile.read(length)
        behaviour = self._next()
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self._lock:
            self.requests.append(Received(headers, body, behaviour, time.monotonic()))
        if behaviour == "close":
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        if behaviour == "slow":
            time.sleep(self.slow)
        elif behaviour == "timeout":
            time.sleep(self.hang)
        elif behaviour == "block":
            self.blocked.set()
            self._released.wait(120)
        status = 500 if behaviour == "500" else 204 if behaviour == "ok" else 200
        try:
            handler.send_response(status)
            handler.send_header("content-length", "0")
            handler.end_headers()
        except OSError:
            pass  # the deliverer gave up waiting and left

    # --- what arrived -------------------------------------------------------------------

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def deliveries(self) -> list[Received]:
        """Each `webhook-id`'s first arrival, in arrival order (a receiver's de-duplication)."""
        seen: set[str] = set()
        first = []
        for request in self.received():
            if request.webhook_id not in seen:
                seen.add(request.webhook_id)
                first.append(request)
        return first

    def event_seqs(self) -> list[int]:
        """The events received, de-duplicated by `webhook-id`, in the order they came."""
        return [seq for request in self.deliveries() for seq in request.seqs()]

    def verify_all(self, secret: str) -> None:
        """Every request is signed with `secret`, per Standard Webhooks."""
        webhook = standardwebhooks.Webhook(secret)
        for request in self.received():
            webhook.verify(request.body, request.headers)


def wait_for(
    condition: Callable[[], bool], timeout: float = 60.0, what: str = "the condition"
) -> None:
    """Poll `condition` until it holds; fail after a generous `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)
