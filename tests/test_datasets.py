"""Dataset builds and purge obligations (SPEC §7): members, roots, proofs and the
obligations each kind of write opens, with the cause and cause time §7.2 defines."""

from __future__ import annotations

import csv
from base64 import b64decode
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger.consent.datasets import member_leaf, validate_record_id
from ledger.consent.decisions import DecisionRequest
from ledger.consent.policy import Policy
from ledger.datasets import obligations as obligations_module
from ledger.errors import CatchingUp, Conflict, InvalidInput, NotFound, PolicyError
from ledger.service import BuildItem, ConsentLedger
from ledger.timestamps import format_timestamp, parse_timestamp, utc_now
from ledger.tlog.merkle import MemoryTree, verify_inclusion
from ledger.tlog.notes import b64

ACTOR = "test"


def _later(seconds: float) -> str:
    return format_timestamp(utc_now() + timedelta(seconds=seconds))


def _register(ledger: ConsentLedger, *ids: str, jurisdiction: str | None = "US") -> None:
    for subject_id in ids:
        ledger.register_subject(subject_id, jurisdiction=jurisdiction, actor=ACTOR)


def _build(
    ledger: ConsentLedger,
    name: str,
    rows: list[tuple[str, str, Any]],
    *,
    version: str = "1",
) -> dict[str, Any]:
    with ledger.dataset_recorder(name, version, actor=ACTOR) as recorder:
        recorder.check([BuildItem(i + 1, *row) for i, row in enumerate(rows)])
        return recorder.finish().to_json()


def _open(ledger: ConsentLedger, name: str) -> dict[str, dict[str, Any]]:
    page = ledger.obligations(name, status="open")
    assert page["next"] is None
    return {o["record_id"]: o for o in page["obligations"]}


def _withdraw(ledger: ConsentLedger, subject_id: str, **terms: Any) -> int:
    request = DecisionRequest(category="*", decision="withdrawn", **terms)
    return ledger.record_consents(subject_id, [request], actor=ACTOR).entries[0].seq


# --- members, roots and proofs ------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 255, 256, 257, 600])
def test_members_root_is_the_rfc9162_root_over_leaves_in_record_id_byte_order(
    ledger: ConsentLedger, count: int
) -> None:
    _register(ledger, "a", "b")
    # Ids whose byte order differs from their number order and from Python's str order
    # only where UTF-8 says so (é sorts after z in bytes).
    ids = [f"r{i}" for i in range(count - 1)] + ["é-last"]
    rows = [(record_id, "ab"[i % 2], "content.public") for i, record_id in enumerate(ids)]
    built = _build(ledger, "posts", rows)
    assert built["build"]["records"] == count
    ordered = sorted(ids, key=lambda r: r.encode())
    refs = {s: ledger.subject_view(s).ref for s in "ab"}
    by_id = {r: s for r, s, _ in rows}
    tree = MemoryTree()
    for record_id in ordered:
        tree.append(
            member_leaf(record_id, refs[by_id[record_id]], ["content.public"], "ai-training")
        )
    root = b64decode(built["build"]["members_root"])
    assert tree.root() == root
    for record_id in {ordered[0], ordered[-1], ordered[len(ordered) // 2]}:
        proof = ledger.member_proof("posts", "1", record_id)
        assert proof["index"] == ordered.index(record_id)
        leaf = member_leaf(record_id, proof["leaf"]["subject"], ["content.public"], "ai-training")
        verify_inclusion(
            leaf, proof["index"], proof["records"], [b64decode(h) for h in proof["hashes"]], root
        )
        entry = proof["entry"]["entries"][0]["entry"]
        assert entry["kind"] == "dataset.recorded"
        assert entry["data"]["members_root"] == b64(root)


def test_a_record_in_several_categories_is_a_member_only_if_every_one_is_eligible(
    ledger: ConsentLedger,
) -> None:
    _register(ledger, "u")
    with ledger.dataset_recorder("mixed", "1", actor=ACTOR) as recorder:
        answers = recorder.check(
            [
                BuildItem(1, "both", "u", ["profile", "content.public"]),
                BuildItem(2, "face", "u", "content.public|biometric.face"),
            ]
        )
        built = recorder.finish()
    assert [a.to_json()["eligible"] for a in answers] == [True, False]
    assert answers[1].to_json()["reason"] == "explicit-consent-required"
    assert built.summary.records == 1
    proof = ledger.member_proof("mixed", "1", "both")
    assert proof["leaf"]["category"] == ["content.public", "profile"]


def test_bad_input_refuses_the_build_and_records_nothing(ledger: ConsentLedger) -> None:
    _register(ledger, "u")
    size = ledger.tree_size()
    with ledger.dataset_recorder("posts", "1", actor=ACTOR) as recorder:
        recorder.check(
            [BuildItem(1, "x" * 257, "u", "profile"), BuildItem(2, "ok", "u", "profile")]
        )
        with pytest.raises(InvalidInput, match="256 characters"):
            recorder.finish()
    with ledger.dataset_recorder("posts", "1", actor=ACTOR) as recorder:
        recorder.check([BuildItem(i, "same", "u", "profile") for i in (1, 2)])
        with pytest.raises(InvalidInput, match="more than once: 'same'"):
            recorder.finish()
    with ledger.dataset_recorder("posts", "1", actor=ACTOR) as recorder:
        answers = recorder.check(
            [
                BuildItem(1, None, "u", "profile"),
                BuildItem(2, "p", "u", "profile", purpose="data-mining"),
                BuildItem(3, "q", "u", "no-such-category"),
                BuildItem(4, "r", "u", 7),
            ]
        )
        assert all("error" in a.to_json() for a in answers)
    assert ledger.tree_size() == size
    with pytest.raises(NotFound):
        ledger.dataset_build("posts", "1")
    for bad in ("Posts", "", "-x", "a" * 129, "a b"):
        with pytest.raises(InvalidInput):
            ledger.dataset_recorder(bad, "1", actor=ACTOR)
    with pytest.raises(InvalidInput, match="purpose"):
        ledger.dataset_recorder("posts", "1", purpose="no-such", actor=ACTOR)
    with pytest.raises(InvalidInput):
        validate_record_id("")


def test_a_version_is_recorded_once(ledger: ConsentLedger) -> None:
    _register(ledger, "u")
    _build(ledger, "posts", [("a", "u", "profile")])
    with pytest.raises(Conflict, match="recorded already"):
        ledger.dataset_recorder("posts", "1", actor=ACTOR)
    # Also when two builds of the same version race: the second to commit is refused.
    first = ledger.dataset_recorder("posts", "2", actor=ACTOR)
    second = ledger.dataset_recorder("posts", "2", actor=ACTOR)
    for recorder in (first, second):
        recorder.check([BuildItem(1, "a", "u", "profile")])
    first.finish()
    with pytest.raises(Conflict):
        second.finish()
    first.close()
    second.close()


# --- what opens an obligation, and what it says ---------------------------------------------


def test_withdrawal_erasure_minor_and_policy_each_open_obligations_with_their_cause(
    ledger: ConsentLedger,
) -> None:
    _register(ledger, "w", "e", "m", "p", "keep")
    rows = [(f"{s}-{i}", s, "profile") for s in ("w", "e", "m", "p", "keep") for i in range(2)]
    _build(ledger, "posts", rows)
    assert _open(ledger, "posts") == {}
    withdrawn = _withdraw(ledger, "w")
    erased = ledger.erase_subject("e", actor=ACTOR).entries[0].seq
    minor = ledger.register_subject("m", jurisdiction="US", minor=True, actor=ACTOR)
    assert minor is not None
    document = ledger.current_policy().to_document()
    document["version"] = 2
    document["purge_within"] = 7
    document["defaults"]["default"]["ai-training"]["profile"] = "deny"
    policy_seq = ledger.publish_policy(Policy.from_document(document), actor=ACTOR).entries[0].seq
    found = _open(ledger, "posts")
    expected = {
        "w": ("withdrawn", withdrawn),
        "e": ("erased", erased),
        "m": ("minor", minor.entries[0].seq),
        "p": ("default-deny", policy_seq),
        "keep": ("default-deny", policy_seq),
    }
    assert set(found) == {record for record, _, _ in rows}
    for record_id, obligation in found.items():
        reason, cause = expected[record_id.split("-")[0]]
        assert (obligation["reason"], obligation["cause"]) == (reason, cause), record_id
        entry = ledger.entry(cause)
        assert obligation["cause_time"] == entry.body["time"]
        days = 7 if reason == "default-deny" else 30
        due = parse_timestamp(obligation["cause_time"]) + timedelta(days=days)
        assert obligation["due"] == format_timestamp(due)


def test_regranting_before_the_purge_cancels_the_obligation(ledger: ConsentLedger) -> None:
    _register(ledger, "u")
    _build(ledger, "posts", [("a", "u", "profile")])
    _withdraw(ledger, "u")
    assert set(_open(ledger, "posts")) == {"a"}
    ledger.record_consents(
        "u", [DecisionRequest(category="profile", decision="granted")], actor=ACTOR
    )
    assert _open(ledger, "posts") == {}
    cancelled = ledger.obligations("posts", status="cancelled")["obligations"]
    assert [o["record_id"] for o in cancelled] == ["a"]
    # A second withdrawal is a new obligation.
    again = _withdraw(ledger, "u")
    assert _open(ledger, "posts")["a"]["cause"] == again


def test_a_withdrawal_taking_effect_later_opens_its_obligation_then(ledger: ConsentLedger) -> None:
    _register(ledger, "u")
    _build(ledger, "posts", [("a", "u", "profile")])
    effective = _later(3600)
    seq = _withdraw(ledger, "u", effective=effective)
    assert _open(ledger, "posts") == {}
    ledger.sweep_obligations(now=_later(1800))
    assert _open_at(ledger) == {}
    ledger.sweep_obligations(now=_later(7200))
    found = _open_at(ledger)
    assert found["a"]["cause"] == seq
    assert found["a"]["cause_time"] == effective


def _open_at(ledger: ConsentLedger) -> dict[str, dict[str, Any]]:
    # What the tables hold after a sweep at an explicit instant (a listing would catch up
    # to the real clock first, which is behind the instants these tests sweep to).
    return {
        o["record_id"]: o
        for o in ledger.obligations("posts", status="open")["obligations"]
        if o["record_id"] is not None
    }


def test_an_expiring_grant_opens_an_obligation_at_its_expiry(ledger: ConsentLedger) -> None:
    _register(ledger, "de", jurisdiction="DE")  # GDPR: opt-in, so the grant is what allows
    expires = _later(3600)
    grant = (
        ledger.record_consents(
            "de",
            [DecisionRequest(category="profile", decision="granted", expires=expires)],
            actor=ACTOR,
        )
        .entries[0]
        .seq
    )
    _build(ledger, "posts", [("a", "de", "profile")])
    ledger.sweep_obligations(now=_later(60))
    assert _open_at(ledger) == {}
    ledger.sweep_obligations(now=_later(7200))
    found = _open_at(ledger)
    assert (found["a"]["reason"], found["a"]["cause"], found["a"]["cause_time"]) == (
        "expired",
        grant,
        expires,
    )


def test_a_withdrawal_between_the_check_and_the_recording_is_not_lost(
    ledger: ConsentLedger,
) -> None:
    _register(ledger, "u", "v")
    with ledger.dataset_recorder("posts", "1", actor=ACTOR) as recorder:
        recorder.check([BuildItem(1, "a", "u", "profile"), BuildItem(2, "b", "v", "profile")])
        seq = _withdraw(ledger, "u")  # after the check, before the build is recorded
        recorder.finish()
    found = _open(ledger, "posts")
    assert set(found) == {"a"}
    assert found["a"]["cause"] == seq


@pytest.mark.parametrize("pipeline", [False, True], ids=["in-process", "writer-process"])
def test_an_import_opens_obligations_like_the_api(
    ledger: ConsentLedger, tmp_path: Path, pipeline: bool
) -> None:
    _register(ledger, "u", "v")
    _build(ledger, "posts", [("a", "u", "profile"), ("b", "v", "profile")])
    path = tmp_path / "decisions.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subject_id", "category", "decision"])
        writer.writerow(["v", "profile", "denied"])
    ledger.import_file(path, actor=ACTOR, pipeline=pipeline)
    found = _open(ledger, "posts")
    assert set(found) == {"b"}
    assert found["b"]["reason"] == "refused"


# --- purges and retirements -----------------------------------------------------------------


def test_purge_fulfils_obligations_counts_voluntary_removals_and_refuses_non_members(
    ledger: ConsentLedger,
) -> None:
    _register(ledger, "u", "v", "e")
    _build(ledger, "posts", [("a", "u", "profile"), ("b", "v", "profile"), ("c", "e", "profile")])
    _withdraw(ledger, "u")
    ledger.erase_subject("e", actor=ACTOR)
    size = ledger.tree_size()
    with pytest.raises(InvalidInput, match="not members of posts@1.*'nope'"):
        ledger.purge_records("posts", "1", ["a", "nope"], actor=ACTOR)
    with pytest.raises(InvalidInput, match="more than once"):
        ledger.purge_records("posts", "1", ["a", "a"], actor=ACTOR)
    assert ledger.tree_size() == size  # nothing half-written
    result = ledger.purge_records("posts", "1", ["a", "b", "c"], actor=ACTOR).to_json()
    assert (result["records"], result["fulfils"], result["voluntary"]) == (3, 2, 1)
    entry = result["receipt"]["entries"][0]["entry"]
    assert entry["kind"] == "dataset.purged"
    assert entry["data"]["fulfils"] == 2
    fulfilled = ledger.obligations("posts", status="fulfilled")["obligations"]
    assert sorted((o["record_id"] or "-", o["reason"]) for o in fulfilled) == [
        ("-", "erased"),  # an erased subject's record id is gone once purged
        ("a", "withdrawn"),
    ]
    assert all(o["closed_by"] == result["seq"] for o in fulfilled)
    with pytest.raises(InvalidInput, match="purged already"):
        ledger.purge_records("posts", "1", ["a"], actor=ACTOR)
    # The root still recomputes: leaves are kept, record ids are not.
    build = ledger.dataset_build("posts", "1")["build"]
    assert (build["members"], build["purged"], build["records"]) == (0, 3, 3)


def test_retiring_a_build_fulfils_its_obligations_and_keeps_nothing(ledger: ConsentLedger) -> None:
    _register(ledger, "u", "v")
    _build(ledger, "posts", [("a", "u", "profile"), ("b", "v", "profile")])
    _withdraw(ledger, "u")
    result = ledger.retire_build("posts", "1", actor=ACTOR)
    assert result["fulfils"] == 1
    assert _open(ledger, "posts") == {}
    build = ledger.dataset_build("posts", "1")["build"]
    assert build["retired"] == result["seq"]
    assert build["members"] == 0
    with pytest.raises(Conflict, match="retired"):
        ledger.purge_records("posts", "1", ["b"], actor=ACTOR)
    with pytest.raises(NotFound):
        ledger.member_proof("posts", "1", "b")
    # Later withdrawals concern no build any more.
    _withdraw(ledger, "v")
    assert _open(ledger, "posts") == {}


def test_subject_datasets_lists_builds_and_open_obligations(ledger: ConsentLedger) -> None:
    _register(ledger, "u", "v")
    _build(ledger, "posts", [("a", "u", "profile"), ("b", "v", "profile")])
    _build(ledger, "posts", [("a2", "u", "content.public")], version="2")
    _withdraw(ledger, "u")
    found = ledger.subject_datasets("u")
    assert [(d["version"], d["records"], len(d["obligations"])) for d in found["datasets"]] == [
        ("1", ["a"], 1),
        ("2", ["a2"], 1),
    ]
    assert ledger.subject_datasets("v")["datasets"][0]["obligations"] == []
    with pytest.raises(NotFound):
        ledger.subject_datasets("nobody")


def test_a_large_policy_reevaluation_says_it_is_catching_up(
    ledger: ConsentLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    subjects = [f"u{i}" for i in range(6)]
    _register(ledger, *subjects)
    _build(ledger, "posts", [(f"r{i:03}", subjects[i % 6], "profile") for i in range(30)])
    # Small chunks so that 30 members are "too many" for a write and a listing to finish.
    monkeypatch.setattr(obligations_module, "INLINE_POLICY_BUDGET", 10)
    monkeypatch.setattr(obligations_module, "POLICY_CHUNK", 10)
    monkeypatch.setattr("ledger.service.datasets.LISTING_BUDGET", 5)
    document = ledger.current_policy().to_document()
    document["version"] = 2
    document["prohibited"].append({"category": "profile", "purpose": "*"})
    ledger.publish_policy(Policy.from_document(document), actor=ACTOR)
    with pytest.raises(CatchingUp, match="sweep"):
        ledger.obligations("posts")
    ledger.sweep_obligations()
    found = _open(ledger, "posts")
    assert len(found) == 30
    assert {o["reason"] for o in found.values()} == {"prohibited"}


def test_purge_within_is_validated() -> None:
    document = Policy.from_document({**_default_document(), "purge_within": 14}).to_document()
    assert document["purge_within"] == 14
    for bad in (0, 3651, "30", True, 1.5):
        with pytest.raises(PolicyError, match="purge_within"):
            Policy.from_document({**_default_document(), "purge_within": bad})
    missing = _default_document()
    missing.pop("purge_within")
    assert Policy.from_document(missing).purge_within == 30


def _default_document() -> dict[str, Any]:
    from ledger.consent.policy import default_policy

    return default_policy().to_document()


def test_the_inline_catch_up_is_a_no_op_without_builds(ledger: ConsentLedger) -> None:
    # Every write runs it: with no build live it must not even read the log.
    _register(ledger, "u")
    _withdraw(ledger, "u")
    assert ledger.dataset_builds() == []
