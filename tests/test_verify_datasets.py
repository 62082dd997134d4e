"""verify's dataset step (SPEC §7) on both engines: a realistic history of builds,
withdrawals, an erasure, purges, a retirement and an expiry verifies; every kind of
tampering with members, leaves or obligations is named by build and record.

Members, obligations, wakeups and the dataset state are mutable tables: an attacker
with database access changes them with plain SQL. The leaves are append-only, so
changing them goes through `tamper` (tests/test_verify.py), as for the log.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text

from ledger.consent.decisions import DecisionRequest
from ledger.consent.policy import Policy, default_policy
from ledger.datasets import obligations
from ledger.errors import VerificationError
from ledger.service import BuildItem, ConsentLedger
from ledger.timestamps import format_timestamp, parse_timestamp, utc_now
from ledger.tlog.merkle import Growth
from ledger.verify import verify_ledger
from tests.test_verify import tamper

ACTOR = "ops"


@dataclass
class Flow:
    """A ledger whose builds have seen every way a record leaves eligibility."""

    ledger: ConsentLedger
    swept: str  # the instant of the last sweep
    seq: dict[str, int]

    @property
    def engine(self) -> Engine:
        return self.ledger.engine


def later(moment: str, **delta: float) -> str:
    return format_timestamp(parse_timestamp(moment) + timedelta(**delta))


def record_build(
    led: ConsentLedger, name: str, version: str, items: list[tuple[str, str, str | list[str]]]
) -> int:
    """Record a build of (record_id, subject_id, category) items; its entry's seq."""
    with led.dataset_recorder(name, version, actor=ACTOR) as recorder:
        answers = recorder.check(
            [BuildItem(line, *item) for line, item in enumerate(items, start=1)]
        )
        built = recorder.finish()
    assert built.summary.seq is not None
    assert built.summary.records == sum(1 for a in answers if a.to_json().get("eligible"))
    return built.summary.seq


@pytest.fixture
def flow(ledger: ConsentLedger) -> Flow:
    led = ledger
    now = format_timestamp(utc_now())
    expires = later(now, hours=1)
    seq: dict[str, int] = {}
    for name, jurisdiction in (
        ("alice", "US"),
        ("bob", "US"),
        ("carol", "US"),
        ("dave", "DE"),
        ("erin", "US"),
        ("fay", "DE"),
    ):
        led.register_subject(name, jurisdiction=jurisdiction, actor=ACTOR)
    # dave (GDPR: opt-in) grants for an hour; fay for a year (still running at the end).
    led.record_consents(
        "dave", [DecisionRequest("content.public", "granted", expires=expires)], actor=ACTOR
    )
    led.record_consents(
        "fay",
        [DecisionRequest("content", "granted", expires=later(now, days=365))],
        actor=ACTOR,
    )
    led.record_consents(
        "erin", [DecisionRequest("biometric.face", "granted", explicit=True)], actor=ACTOR
    )
    items: list[tuple[str, str, str | list[str]]] = [
        ("r01", "alice", "content.public"),
        ("r02", "alice", "profile"),
        ("r03", "bob", "content.public"),
        ("r04", "bob", ["content.public", "activity"]),
        ("r05", "carol", "content.public"),
        ("r06", "dave", "content.public"),
        ("r07", "erin", "content.public|biometric.face"),
        ("r08", "fay", "content.public"),
        ("r09", "nobody", "content.public"),  # unknown: answered, not recorded
        ("r10", "dave", "profile"),  # default-deny in the EU: not recorded
        ("r11", "erin", "profile"),
        ("r12", "carol", "activity"),
    ]
    seq["build_1"] = record_build(led, "posts", "1", items)
    seq["build_2"] = record_build(led, "posts", "2", items)
    # A third build of many records (more than one chunk of leaves, several batches).
    seq["build_big"] = record_build(
        led, "bulk", "1", [(f"b{n:04}", ("alice", "bob")[n % 2], "activity") for n in range(600)]
    )
    seq["bob_withdrawn"] = (
        led.record_consents("bob", [DecisionRequest("content.public", "withdrawn")], actor=ACTOR)
        .entries[0]
        .seq
    )
    seq["carol_erased"] = led.erase_subject("carol", actor=ACTOR).entries[0].seq
    seq["purge"] = led.purge_records("posts", "1", ["r03", "r05", "r01"], actor=ACTOR).seq
    seq["retired"] = led.retire_build("posts", "2", actor=ACTOR)["seq"]
    swept = later(expires, minutes=1)
    led.sweep_obligations(now=swept)
    return Flow(led, swept, seq)


def open_obligations(led: ConsentLedger, dataset: str) -> dict[tuple[str, str | None], str]:
    listing = led.obligations(dataset, status="open", limit=1000)
    assert listing["next"] is None
    return {(o["version"], o["record_id"]): o["reason"] for o in listing["obligations"]}


def execute(engine: Engine, sql: str, params: dict[str, Any] | None = None) -> None:
    with engine.begin() as connection:
        connection.execute(text(sql), params or {})


def scalar(engine: Engine, sql: str, params: dict[str, Any] | None = None) -> Any:
    with engine.connect() as connection:
        return connection.execute(text(sql), params or {}).scalar_one()


def member_where(flow: Flow, version: str, record_id: str) -> dict[str, Any]:
    return {"build": flow.seq[f"build_{version}"], "record": record_id}


# --- healthy ------------------------------------------------------------------------------


def test_a_realistic_history_of_builds_verifies(flow: Flow) -> None:
    led = flow.ledger
    assert open_obligations(led, "posts") == {
        ("1", "r04"): "withdrawn",
        ("1", "r06"): "expired",
        ("1", "r12"): "erased",
    }
    calls: list[tuple[int, int]] = []

    report = led.verify(progress=lambda done, total: calls.append((done, total)))

    assert (report.datasets, report.members) == (3, 7 + 600)
    assert report.entries == led.tree_size()
    done, total = calls[-1]
    assert done == total == report.entries + report.members
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_a_ledger_without_builds_verifies(ledger: ConsentLedger) -> None:
    report = ledger.verify()

    assert (report.datasets, report.members) == (0, 0)


def test_verify_passes_while_a_policy_re_evaluation_is_catching_up(
    flow: Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Writes re-evaluate at most 2 members of a policy's job: the rest is left pending.
    monkeypatch.setattr(obligations, "catch_up", functools.partial(obligations.catch_up, budget=2))
    document = default_policy().to_document()
    document["version"] = 2
    document["prohibited"].append({"category": "activity", "purpose": "ai-training"})
    flow.ledger.publish_policy(Policy.from_document(document), actor=ACTOR)
    assert scalar(flow.engine, "SELECT policy_job FROM dataset_state") is not None

    flow.ledger.verify()

    flow.ledger.sweep_obligations(now=later(flow.swept, seconds=1))
    assert scalar(flow.engine, "SELECT policy_job FROM dataset_state") is None
    assert len(flow.ledger.obligations("bulk", status="open", limit=1000)["obligations"]) == 600
    flow.ledger.verify()


def test_verify_takes_the_instant_of_the_last_sweep(flow: Flow) -> None:
    # Sweeping later (nothing changes in between) keeps the obligations exact.
    flow.ledger.sweep_obligations(now=later(flow.swept, days=2))

    flow.ledger.verify()


# --- members --------------------------------------------------------------------------------

LEAF_CHANGED = "does not match the leaf at position {position} that entry {build} signs"


@pytest.mark.parametrize(
    ("sql", "named", "position"),
    [
        pytest.param(
            "UPDATE dataset_members SET record_id = 'r02x' WHERE build = :build "
            "AND record_id = :record",
            "r02x",
            1,
            id="record-id",
        ),
        pytest.param(
            "UPDATE dataset_members SET category = 'activity' WHERE build = :build "
            "AND record_id = :record",
            "r02",
            1,
            id="category",
        ),
        pytest.param(
            "UPDATE dataset_members SET ref = (SELECT ref FROM dataset_members m WHERE "
            "m.build = :build AND m.record_id = 'r11') "
            "WHERE build = :build AND record_id = :record",
            "r02",
            1,
            id="subject",
        ),
    ],
)
def test_a_changed_member_row_is_named(flow: Flow, sql: str, named: str, position: int) -> None:
    execute(flow.engine, sql, member_where(flow, "1", "r02"))
    build = flow.seq["build_1"]

    with pytest.raises(VerificationError) as excinfo:
        flow.ledger.verify()

    assert str(excinfo.value).startswith(f"dataset posts@1 record {named!r}: ")
    assert LEAF_CHANGED.format(position=position, build=build) in str(excinfo.value)


def test_a_member_deleted_without_a_purge_is_named(flow: Flow) -> None:
    execute(
        flow.engine,
        "DELETE FROM dataset_members WHERE build = :build AND record_id = :record",
        member_where(flow, "1", "r02"),
    )

    with pytest.raises(
        VerificationError,
        match=r"^dataset posts@1: has 6 members and its purges removed 3 records, but entry "
        r"\d+ recorded 10: 1 member\(s\) were deleted without a purge",
    ):
        flow.ledger.verify()


def test_a_member_with_an_obligation_deleted_without_a_purge_is_named(flow: Flow) -> None:
    execute(
        flow.engine,
        "DELETE FROM dataset_members WHERE build = :build AND record_id = :record",
        member_where(flow, "1", "r04"),
    )

    with pytest.raises(
        VerificationError,
        match=r"^dataset posts@1 record 'r04': obligation \d+ is open, but no member points",
    ):
        flow.ledger.verify()


def test_a_member_left_in_a_retired_build_is_named(flow: Flow) -> None:
    execute(
        flow.engine,
        "INSERT INTO dataset_members (build, record_id, position, ref, category) "
        "SELECT :build, record_id, position, ref, category FROM dataset_members "
        "WHERE build = :first AND record_id = 'r02'",
        {"build": flow.seq["build_2"], "first": flow.seq["build_1"]},
    )

    with pytest.raises(
        VerificationError,
        match=rf"^dataset posts@2 record 'r02': is a member still, but entry "
        rf"{flow.seq['retired']} retired the build",
    ):
        flow.ledger.verify()


def test_members_out_of_record_order_are_named(flow: Flow) -> None:
    # Swap two members' positions: each is then compared with the other's leaf.
    execute(
        flow.engine,
        "UPDATE dataset_members SET position = 11 - position WHERE build = :build "
        "AND record_id IN ('r06', 'r07')",
        {"build": flow.seq["build_1"]},
    )

    with pytest.raises(VerificationError, match=r"^dataset posts@1 record 'r07': "):
        flow.ledger.verify()


# --- leaves -------------------------------------------------------------------------------


def test_a_changed_leaf_chunk_is_named(flow: Flow) -> None:
    tamper(
        flow.engine,
        "UPDATE dataset_leaves SET hashes = :forged WHERE build = :build AND chunk = 1",
        {"forged": b"\x42" * 32 * 256, "build": flow.seq["build_big"]},
    )

    with pytest.raises(
        VerificationError,
        match=r"^dataset bulk@1: leaves chunk 1: the stored root is not the root over its leaves",
    ):
        flow.ledger.verify()


def test_a_leaf_chunk_rewritten_with_its_root_breaks_the_signed_members_root(flow: Flow) -> None:
    # A purged record's leaf forged, chunk root recomputed: only members_root tells.
    build = flow.seq["build_1"]
    with flow.engine.connect() as connection:
        hashes = bytes(
            connection.execute(
                text("SELECT hashes FROM dataset_leaves WHERE build = :build"), {"build": build}
            ).scalar_one()
        )
    forged = b"\x42" * 32 + hashes[32:]  # position 0 is r01, purged
    tamper(
        flow.engine,
        "UPDATE dataset_leaves SET hashes = :hashes, root = :root WHERE build = :build",
        {"hashes": forged, "root": Growth(0, (), forged).root, "build": build},
    )

    with pytest.raises(
        VerificationError,
        match=rf"^dataset posts@1: the root over its leaves is not the members_root entry "
        rf"{build} signs",
    ):
        flow.ledger.verify()


def test_a_deleted_leaf_chunk_is_named(flow: Flow) -> None:
    tamper(
        flow.engine,
        "DELETE FROM dataset_leaves WHERE build = :build AND chunk = 1",
        {"build": flow.seq["build_big"]},
    )

    with pytest.raises(VerificationError, match=r"^dataset bulk@1: leaves chunk 1 is missing"):
        flow.ledger.verify()


# --- obligations ----------------------------------------------------------------------------


def test_a_deleted_obligation_is_named(flow: Flow) -> None:
    execute(
        flow.engine,
        "DELETE FROM dataset_obligations WHERE build = :build AND record_id = :record",
        member_where(flow, "1", "r06"),
    )

    with pytest.raises(
        VerificationError,
        match=r"^dataset posts@1 record 'r06': points at obligation \d+, which does not exist",
    ):
        flow.ledger.verify()


def test_an_obligation_unlinked_from_its_member_is_named(flow: Flow) -> None:
    execute(
        flow.engine,
        "UPDATE dataset_members SET obligation = NULL WHERE build = :build AND record_id = :record",
        member_where(flow, "1", "r06"),
    )

    with pytest.raises(
        VerificationError,
        match=r"^dataset posts@1 record 'r06': is not eligible since .* \(expired, entry \d+\), "
        "but has no open obligation",
    ):
        flow.ledger.verify()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param("due = '2099-01-01T00:00:00.000000Z'", "due", id="due"),
        pytest.param("reason = 'refused'", "reason", id="reason"),
        pytest.param("cause = cause - 1", "cause", id="cause"),
        pytest.param("cause_time = '2020-01-01T00:00:00.000000Z'", "cause_time", id="cause-time"),
    ],
)
def test_a_changed_obligation_is_named(flow: Flow, change: str, field: str) -> None:
    execute(
        flow.engine,
        f"UPDATE dataset_obligations SET {change} WHERE build = :build AND record_id = :record",
        member_where(flow, "1", "r04"),
    )

    with pytest.raises(
        VerificationError,
        match=rf"^dataset posts@1 record 'r04': obligation \d+ says {field} .*, but the log gives",
    ):
        flow.ledger.verify()


def test_an_obligation_for_an_eligible_member_is_named(flow: Flow) -> None:
    # Point alice's eligible record at bob's open obligation, moved to her position.
    execute(
        flow.engine,
        "UPDATE dataset_obligations SET position = 1, record_id = 'r02' "
        "WHERE build = :build AND record_id = 'r04'",
        {"build": flow.seq["build_1"]},
    )
    execute(
        flow.engine,
        "UPDATE dataset_members SET obligation = (SELECT obligation FROM dataset_members m "
        "WHERE m.build = :build AND m.record_id = 'r04') WHERE build = :build "
        "AND record_id = 'r02'",
        {"build": flow.seq["build_1"]},
    )

    with pytest.raises(
        VerificationError,
        match=r"^dataset posts@1 record 'r02': is eligible at .*, but has open obligation",
    ):
        flow.ledger.verify()


def test_an_obligation_closed_by_another_entry_is_named(flow: Flow) -> None:
    execute(
        flow.engine,
        "UPDATE dataset_obligations SET closed_seq = :other WHERE closed_seq = :purge",
        {"other": flow.seq["bob_withdrawn"], "purge": flow.seq["purge"]},
    )

    with pytest.raises(
        VerificationError,
        match=rf"^dataset posts@1 record 'r03': obligation \d+ is fulfilled by entry "
        rf"{flow.seq['bob_withdrawn']}, which neither purges nor retires this build",
    ):
        flow.ledger.verify()


def test_a_purge_fulfilling_fewer_obligations_than_it_says_is_named(flow: Flow) -> None:
    execute(
        flow.engine,
        "UPDATE dataset_obligations SET status = 'cancelled', closed_seq = NULL "
        "WHERE closed_seq = :purge AND record_id = 'r03'",
        {"purge": flow.seq["purge"]},
    )

    with pytest.raises(
        VerificationError,
        match=rf"^entry {flow.seq['purge']}: says it fulfilled 2 obligations, 1 name it",
    ):
        flow.ledger.verify()


# --- the state row and wakeups ----------------------------------------------------------------


def test_obligations_behind_the_log_are_named(flow: Flow) -> None:
    size = flow.ledger.tree_size()
    execute(flow.engine, "UPDATE dataset_state SET through_seq = through_seq - 2")

    with pytest.raises(
        VerificationError,
        match=rf"^entry {size - 2}: obligations are kept up to entry {size - 2}, but the log "
        rf"holds {size} entries",
    ):
        flow.ledger.verify()


def test_a_wrong_count_of_live_builds_is_named(flow: Flow) -> None:
    execute(flow.engine, "UPDATE dataset_state SET live_builds = 0")

    with pytest.raises(
        VerificationError, match=r"^dataset state: says 0 live builds, the log has 2"
    ):
        flow.ledger.verify()


def test_a_deleted_wakeup_is_named(flow: Flow) -> None:
    # fay's year-long grant expires after the last sweep: a wakeup must await it.
    execute(flow.engine, "DELETE FROM dataset_wakeups")

    with pytest.raises(
        VerificationError,
        match=r"^dataset posts@1 record 'r08': its subject has a decision taking effect or "
        "expiring at .*, but no wakeup awaits it",
    ):
        flow.ledger.verify()


# --- cost ---------------------------------------------------------------------------------


def test_verifying_ten_thousand_members_is_quick(ledger: ConsentLedger) -> None:
    """10,000 members of 2,000 subjects with a decision each: the dataset step's cost, with
    the eligibility-when-recorded check, stays a small multiple of the log's."""
    subjects = [f"s{n:04}" for n in range(2_000)]
    for subject in subjects:
        ledger.register_subject(subject, jurisdiction="US", actor=ACTOR)
    with ledger.dataset_recorder("posts", "1", actor=ACTOR) as recorder:
        recorder.check(
            [BuildItem(n, f"p{n:05}", subjects[n % 2_000], "content.public") for n in range(10_000)]
        )
        recorder.finish()
    for subject in subjects[::10]:
        ledger.record_consents(
            subject, [DecisionRequest("content.public", "withdrawn")], actor=ACTOR
        )

    started = time.perf_counter()
    report = verify_ledger(ledger.engine)
    elapsed = time.perf_counter() - started

    assert report.members == 10_000
    print(f"verify with 10,000 members: {elapsed:.2f} s")  # noqa: T201
    assert elapsed < 20
