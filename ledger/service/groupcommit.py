"""Group commit: concurrent writers share one transaction, one checkpoint, one fsync.

A write's cost is dominated by what happens once per transaction — taking the
write lock, signing the checkpoint, the commit's fsync — not by its entries.
When writes arrive concurrently, the first caller becomes the leader: it takes
every request queued so far and runs them in one transaction, each in its own
savepoint so that one request's error (an unknown subject, say) fails only that
request. Followers sleep until the leader has committed their entries; then the
next queued caller leads. A lone writer leads at once and waits for nobody, so
nothing is delayed to make groups bigger.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from ledger.tlog.log import LogWriter, SealedAppend

Build = Callable[[LogWriter, Session], None]


@dataclass
class GroupRequest:
    actor: str
    build: Build
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    result: SealedAppend | None = None
    error: BaseException | None = None
    first: int = 0
    last: int = 0


class GroupCommitter:
    def __init__(self, run_group: Callable[[Sequence[GroupRequest]], None], max_group: int = 256):
        self._run_group = run_group
        self._max_group = max_group
        self._lock = threading.Lock()
        self._queue: list[GroupRequest] = []
        self._busy = False

    def submit(self, actor: str, build: Build) -> SealedAppend | None:
        request = GroupRequest(actor=actor, build=build)
        with self._lock:
            self._queue.append(request)
            if not self._busy:
                self._busy = True
                request.lead = True
        if not request.lead:
            request.done.wait()
            if not request.lead:
                return _outcome(request)
        with self._lock:
            group = self._queue[: self._max_group]
            del self._queue[: len(group)]
        try:
            self._run_group(group)
        except BaseException as exc:  # the commit itself failed: every request failed
            for member in group:
                if member.error is None:
                    member.error = exc
                    member.result = None
        finally:
            with self._lock:
                if self._queue:
                    successor = self._queue[0]
                    successor.lead = True
                    successor.done.set()
                else:
                    self._busy = False
            for member in group:
                if member is not request:
                    member.done.set()
        return _outcome(request)


def _outcome(request: GroupRequest) -> SealedAppend | None:
    if request.error is not None:
        raise request.error
    return request.result
