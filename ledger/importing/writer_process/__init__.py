"""The import's writer process (`python -m ledger.importing.writer_process`), which
validates the second part of a large file and commits the batches the importing process
prepares; `WriterProcess` is the importing side's handle on it.

They talk in pickles over the child's stdin and stdout. In: the database URL, then
("validate", (policy document, erasure secret, spool fd)), ("part", (path, FilePart)),
("validated", None), and ("write", PreparedBatch) for each batch. Out, answering
"validated" and each "write" in order: ("ok", answer), or ("failed", message) and the
child stops.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine

from ledger.consent.policy import Policy
from ledger.errors import LedgerError
from ledger.gcpause import no_gc
from ledger.importing.batches import DEFAULT_BATCH, ImportContext, PreparedBatch, commit_prepared
from ledger.importing.rows import FilePart, HashingReader, RowError, read_rows
from ledger.importing.spool import Spool
from ledger.importing.validation import Validation, erased_rows
from ledger.store.db import make_engine


class ImportWriteFailed(LedgerError):
    """The writer process could not write a batch (the batches before it have landed)."""


class WriterProcess:
    """A child process (`python -m ledger.importing.writer_process`) that commits prepared batches
    (`commit_prepared`), one at a time, answering each with the tree size after it.

    Writing is about half an import's work and this process's other half is pure
    Python: in one process the two take turns, in two they overlap (a thread would
    not do: the SQLite driver takes the GIL back for every row). The child dies with
    this process, so a killed import leaves nothing in flight. Messages are pickles
    over the child's stdin and stdout, the database URL first (never on a command
    line, where `ps` would show its password).
    """

    def __init__(self, engine: Engine) -> None:
        # The child imports this very `ledger`, wherever it was imported from: the
        # directory that holds ledger/importing/writer_process/.
        package_root = str(Path(__file__).resolve().parents[3])
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (package_root, path)))}
        # It spools the rows it validates to a file of ours that has no name: the open
        # file is passed down, under the same descriptor number.
        self._spool = Spool()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "ledger.importing.writer_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            pass_fds=(self._spool.fileno(),),
        )
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._to_child: IO[bytes] = self._process.stdin
        self._from_child: IO[bytes] = self._process.stdout
        # Messages go out from a thread of their own, in order: a batch is megabytes
        # and the pipe holds 64 KB, and this process goes on while the child reads.
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._broken = False
        self._sender = threading.Thread(target=self._send_all, daemon=True)
        self._sender.start()
        self._put(engine.url.render_as_string(hide_password=False))

    @staticmethod
    def can_write(engine: Engine) -> bool:
        """Whether a second process can reach this database (not an in-memory SQLite)."""
        url = engine.url
        return url.get_backend_name() != "sqlite" or url.database not in (None, "", ":memory:")

    def __enter__(self) -> WriterProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._spool.close()
        self._outbox.put(None)
        self._sender.join()
        # Closing its stdin tells the child to stop; a batch it is writing still lands.
        try:
            self._to_child.close()
        except BrokenPipeError:
            pass
        try:
            self._process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._from_child.close()

    def _put(self, message: object) -> None:
        if self._broken:
            raise self._stopped()
        self._outbox.put(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    def _send_all(self) -> None:
        while (data := self._outbox.get()) is not None:
            if self._broken:
                continue  # the child is gone: drop the rest
            try:
                self._to_child.write(data)
                self._to_child.flush()
            except (BrokenPipeError, ValueError):  # ValueError: stdin already closed
                self._broken = True

    def validate(self, context: ImportContext, path: Path, part: FilePart) -> Spool:
        """Have the child validate the `part` of `path` that starts there, meanwhile; its
        good rows go to the spool returned (positions counted from 1)."""
        document = context.policy.to_document()
        self._put(("validate", (document, context.erasure_secret, self._spool.fileno())))
        self._put(("part", (str(path), part)))
        return self._spool

    def validated(self) -> tuple[list[RowError], int]:
        """The part's bad rows and how many rows it had, once all its good ones are spooled."""
        self._put(("validated", None))
        errors, rows = self._reply()
        return errors, int(rows)

    def send(self, prepared: PreparedBatch) -> None:
        """Queue a batch for the child; its answers come back in order (`result`)."""
        self._put(("write", prepared))

    def result(self) -> int | None:
        """The tree size after the oldest batch not yet answered, or None if it was
        not written (the head had moved)."""
        size: int | None = self._reply()
        return size

    def _reply(self) -> Any:
        try:
            kind, value = pickle.load(self._from_child)
        except EOFError:
            raise self._stopped() from None
        if kind == "failed":
            raise ImportWriteFailed(f"{value}; run the import again to resume")
        return value

    def _stopped(self) -> ImportWriteFailed:
        code = self._process.wait()
        return ImportWriteFailed(
            f"the import's writer process stopped (exit code {code}); "
            "run the import again to resume"
        )


def serve_writer(incoming: IO[bytes], outgoing: IO[bytes]) -> None:
    """The writer process: commit each batch received until its input closes."""
    die_with_parent()
    # Ctrl-C is for the importing process, which stops this one once it has a result.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    engine = make_engine(pickle.load(incoming))
    try:
        _serve(engine, incoming, outgoing)
    finally:
        engine.dispose()


def _serve(engine: Engine, incoming: IO[bytes], outgoing: IO[bytes]) -> None:
    # Unpickling a batch makes tens of thousands of tuples, all freed with it.
    validation: tuple[Policy, bytes, int] | None = None
    validated: tuple[list[RowError], int] | None = None
    with no_gc():
        while True:
            try:
                kind, value = pickle.load(incoming)
            except EOFError:
                return
            try:
                if kind == "validate":
                    document, secret, fd = value
                    validation = (Policy.from_document(document), secret, fd)
                    continue
                if kind == "part":
                    assert validation is not None, "validate comes first"
                    validated = _validate_part(engine, *validation, *value)
                    continue  # the answer waits for "validated"
                if kind == "validated":
                    assert validated is not None, "part comes first"
                    reply: Any = validated
                else:
                    reply = commit_prepared(engine, value)
            except Exception as exc:  # noqa: BLE001 - reported to the importing process
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                pickle.dump(("failed", first), outgoing)
                outgoing.flush()
                return
            pickle.dump(("ok", reply), outgoing, protocol=pickle.HIGHEST_PROTOCOL)
            outgoing.flush()


def _validate_part(
    engine: Engine, policy: Policy, secret: bytes, fd: int, path: str, part: FilePart
) -> tuple[list[RowError], int]:
    """The writer process's share of pass 1: the rows of `path` from `part` on."""
    file = Path(path)
    spool = Spool(os.fdopen(fd, "wb", buffering=1 << 20, closefd=False))
    validation = Validation(policy, spool, partial(erased_rows, engine, secret))
    with file.open("rb") as handle:
        handle.seek(part.offset)
        reader = HashingReader(handle, first_line=part.first_line)
        rows = validation.add_rows(read_rows(file, reader, part.names), DEFAULT_BATCH)
    return validation.finish(), rows


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (elsewhere: best effort,
    the closed pipe stops it at its next batch)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


_PR_SET_PDEATHSIG = 1
