"""The log head: how fresh the tree size unanchored checks are answered at is, per engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from ledger.errors import NotFresh
from ledger.service import ConsentLedger
from ledger.service.head import HEAD_MAX_AGE, HEAD_STALE_LIMIT, HeadTracker
from ledger.settings import Settings
from tests.service.helpers import ACTOR, ALICE, BOB


@pytest.fixture
def tracker(ledger: ConsentLedger) -> Iterator[HeadTracker]:
    """A head tracker of its own on the ledger's database, as another API process has."""
    instance = HeadTracker(ledger.engine)
    yield instance
    instance.close()


def _write_elsewhere(settings: Settings, subject_id: str) -> int:
    other = ConsentLedger(settings)
    try:
        sealed = other.register_subject(subject_id, actor=ACTOR)
        assert sealed is not None
        return sealed.tree_size
    finally:
        other.close()


def _only_on(ledger: ConsentLedger, engine: str) -> None:
    if ledger.engine.dialect.name != engine:
        pytest.skip(f"a rule of the {engine} head")


def test_a_write_by_this_process_moves_the_head_at_once(ledger: ConsentLedger) -> None:
    asyncio.run(ledger.head_async())

    sealed = ledger.register_subject(ALICE, actor=ACTOR)

    assert sealed is not None
    assert asyncio.run(ledger.head_async()).tree_size == sealed.tree_size
    # From memory, never re-read: only the writer's own report can have moved it.
    remembered = ledger._head.head_nowait(max_age=float("inf"))
    assert remembered is not None
    assert remembered.tree_size == sealed.tree_size


def test_the_head_never_goes_back_behind_a_commit_seen_here(tracker: HeadTracker) -> None:
    read = tracker.head()
    # A commit noted while a read that started before it was in flight.
    tracker.saw_tree_size(read.tree_size + 5)

    assert tracker.head(max_age=0.0).tree_size == read.tree_size + 5


def test_a_write_elsewhere_is_seen_once_the_head_is_older_than_its_maximum_age(
    ledger: ConsentLedger, settings: Settings, tracker: HeadTracker
) -> None:
    tracker.head()
    size = _write_elsewhere(settings, ALICE)

    time.sleep(HEAD_MAX_AGE[ledger.engine.dialect.name] + 0.01)

    assert tracker.head().tree_size == size


def test_a_local_head_is_read_afresh_for_every_request(
    ledger: ConsentLedger, settings: Settings, tracker: HeadTracker
) -> None:
    _only_on(ledger, "sqlite")
    asyncio.run(tracker.head_async())

    size = _write_elsewhere(settings, ALICE)

    assert asyncio.run(tracker.head_async()).tree_size == size


def test_a_remote_head_is_answered_from_memory_until_stale_then_waited_for(
    ledger: ConsentLedger, settings: Settings, tracker: HeadTracker
) -> None:
    _only_on(ledger, "postgresql")
    first = tracker.head()
    size = _write_elsewhere(settings, ALICE)

    async def requests() -> None:
        # Past the maximum age but not stale: answered at once at the last head,
        # while one read runs in the background.
        aged = first._replace(read_at=time.monotonic() - HEAD_STALE_LIMIT / 5)
        tracker._head = aged
        assert await tracker.head_async() is aged
        assert tracker._read_in_flight is not None
        assert (await tracker._read_in_flight).tree_size == size
        # Stale: the request waits for a read.
        newer = _write_elsewhere(settings, BOB)
        tracker._head = aged._replace(read_at=time.monotonic() - HEAD_STALE_LIMIT - 0.01)
        assert (await tracker.head_async()).tree_size == newer

    asyncio.run(requests())


def test_waiting_for_a_tree_size_the_log_does_not_reach_gives_up(tracker: HeadTracker) -> None:
    size = tracker.tree_size()

    tracker.await_tree_size(size, timeout=0.0)
    with pytest.raises(NotFresh, match=f"tree size {size}, not yet {size + 1}"):
        tracker.await_tree_size(size + 1, timeout=0.05)
