"""NDJSON exchanges that send and read at once: a dataset build of any size.

The ledger answers a build (`POST /v1/datasets/{name}/versions/{version}`) line
by line while it reads it, and stops reading once its answers back up unread.
A client that sends the whole body before reading anything (httpx does, like
most HTTP/1.1 clients) then waits on the server while the server waits on it:
past a few megabytes of answers, the build hangs until a timeout. So a build
goes out from a thread, over a connection of its own (`http.client`, chunked),
while the caller reads the answers; at most `window` items are sent and not yet
answered, so memory stays bounded whatever the size of the build.

An interrupted body (the caller stops reading, an item cannot be encoded) is
never terminated: the connection is shut down instead, and the server, which
never saw the end of the build, records nothing.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from typing import Protocol
from urllib.parse import urlsplit

import httpx

__all__ = ["DuplexExchange", "Exchange", "HttpxExchange"]

# Lines sent in one write (a chunk of the chunked body), at most.
FLUSH_BYTES = 64 * 1024


class Exchange(Protocol):
    """A streamed request and its streamed answer, as the build reader needs them."""

    @property
    def status_code(self) -> int: ...

    def header(self, name: str) -> str | None: ...

    def read(self) -> bytes:
        """The whole answer (for an error status)."""
        ...

    def lines(self) -> Iterator[bytes]:
        """The answer's lines, as they arrive."""
        ...

    def answered(self) -> None:
        """One more item has been answered (frees a place in the window)."""
        ...

    def sent(self) -> int:
        """How many items went out, once the body has been sent; raises what stopped it."""
        ...

    def close(self) -> None: ...


class DuplexExchange:
    """POST `body` (NDJSON lines, one per item) over its own connection, chunked,
    from a thread, while the caller reads the answer."""

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str],
        body: Iterator[bytes],
        *,
        timeout: float | None,
        window: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"cannot stream a build to {url!r}: an http(s) URL is needed")
        self._connection: http.client.HTTPConnection
        if parts.scheme == "https":
            self._connection = http.client.HTTPSConnection(
                parts.hostname,
                parts.port,
                timeout=timeout,
                context=ssl_context or ssl.create_default_context(),
            )
        else:
            self._connection = http.client.HTTPConnection(
                parts.hostname, parts.port, timeout=timeout
            )
        self._body = body
        self._places = threading.Semaphore(window)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._count = 0
        self._failure: BaseException | None = None
        self._response: http.client.HTTPResponse | None = None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection = self._connection
        connection.putrequest("POST", target, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        # The writer sends on the socket itself: http.client drops its socket from the
        # connection when an answer says `Connection: close`, and would reconnect to send.
        assert connection.sock is not None
        self._sock: socket.socket = connection.sock
        self._writer = threading.Thread(target=self._send, name="consent-ledger-build", daemon=True)
        self._writer.start()
        try:
            self._response = connection.getresponse()
        except BaseException:
            self.close()
            if self._failure is None:
                raise
        if self._response is None:
            assert self._failure is not None
            raise self._failure  # what stopped the body (and so the answer), as it was

    # --- the writing side (its own thread) ---------------------------------------------------

    def _send(self) -> None:
        pending: list[bytes] = []
        size = 0
        try:
            for line in self._body:
                # Never wait for a place while holding unsent lines: the server may be
                # waiting for exactly those before it answers the ones in flight.
                if not self._places.acquire(blocking=False):
                    if pending:
                        self._write(pending)
                        pending, size = [], 0
                    while not self._places.acquire(timeout=0.1):
                        if self._stop.is_set():
                            return
                if self._stop.is_set():
                    return
                pending.append(line)
                size += len(line)
                self._count += 1
                if size >= FLUSH_BYTES:
                    self._write(pending)
                    pending, size = [], 0
            if pending:
                self._write(pending)
            self._sock.sendall(b"0\r\n\r\n")  # the end of the build
        except BaseException as exc:  # handed to the reading side
            self._failure = exc
            self._shut_down()
        finally:
            self._done.set()

    def _write(self, lines: list[bytes]) -> None:
        data = b"".join(lines)
        self._sock.sendall(b"%X\r\n%b\r\n" % (len(data), data))

    def _shut_down(self) -> None:
        # Wakes a thread blocked on the socket, where close() alone might not.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    # --- the reading side --------------------------------------------------------------------

    @property
    def status_code(self) -> int:
        assert self._response is not None
        return self._response.status

    def header(self, name: str) -> str | None:
        assert self._response is not None
        return self._response.getheader(name)

    def read(self) -> bytes:
        assert self._response is not None
        return self._response.read()

    def lines(self) -> Iterator[bytes]:
        assert self._response is not None
        try:
            while line := self._response.readline():
                yield line
        except (OSError, http.client.HTTPException):
            if self._failure is None:
                raise
        if self._failure is not None:  # the answer ended because the body could not be sent
            raise self._failure

    def answered(self) -> None:
        self._places.release()

    def sent(self) -> int:
        self._done.wait()
        if self._failure is not None:
            raise self._failure
        return self._count

    def close(self) -> None:
        self._stop.set()
        if not self._done.is_set():
            self._shut_down()
        self._writer.join()
        if self._response is not None:
            self._response.close()
        self._connection.close()
        self._sock.close()


class HttpxExchange:
    """The same exchange through an injected httpx client (e.g. FastAPI's TestClient):
    the body is sent whole before the answer is read, which an in-process app
    absorbs but a server over a socket may not (see the module's docstring)."""

    def __init__(
        self, http: httpx.Client, url: str, headers: Mapping[str, str], body: Iterator[bytes]
    ) -> None:
        self._count = 0

        def counted() -> Iterator[bytes]:
            for line in body:
                self._count += 1
                yield line

        self._context = http.stream("POST", url, content=counted(), headers=dict(headers))
        self._response = self._context.__enter__()

    @property
    def status_code(self) -> int:
        return self._response.status_code

    def header(self, name: str) -> str | None:
        value: str | None = self._response.headers.get(name)
        return value

    def read(self) -> bytes:
        return self._response.read()

    def lines(self) -> Iterator[bytes]:
        pending = b""
        for data in self._response.iter_bytes():
            pending += data
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line + b"\n"
        if pending:
            yield pending

    def answered(self) -> None:
        pass

    def sent(self) -> int:
        return self._count

    def close(self) -> None:
        self._context.__exit__(None, None, None)
