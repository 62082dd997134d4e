"""`demo seed` (ledger.demo.seed_demo): its posts, its two dataset builds, and the purge
obligations the later decisions, the erasure and the policy change open, on SQLite and
PostgreSQL."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ledger.demo import (
    POSTS_BUILD,
    POSTS_FIELDS,
    PROFILES_BUILD,
    generate_posts,
    seed_demo,
    write_posts,
)
from ledger.service import ConsentLedger

ACTOR = "test"
SUBJECTS = 200


def all_obligations(ledger: ConsentLedger, dataset: str) -> list[dict[str, Any]]:
    listed, after = [], None
    while True:
        page = ledger.obligations(dataset, after=after)
        listed += page["obligations"]
        after = page["next"]
        if after is None:
            return listed


def test_posts_are_the_same_for_the_same_seed_with_stable_record_ids(tmp_path: Path) -> None:
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    assert write_posts(first, 40) == write_posts(second, 40) == 40 * 50
    assert first.read_bytes() == second.read_bytes()
    write_posts(second, 40, seed=1)
    assert first.read_bytes() != second.read_bytes()
    with first.open(newline="", encoding="utf-8") as handle:
        posts = list(csv.DictReader(handle))
    assert list(posts[0]) == list(POSTS_FIELDS)
    assert [post["record_id"] for post in posts[:2]] == ["post-000000", "post-000001"]
    assert len({post["record_id"] for post in posts}) == len(posts)
    categories = Counter(post["category"] for post in posts)
    assert set(categories) == {
        "content.public",
        "content.private",
        "content.private.messages",
        "biometric.face",
    }
    assert categories.most_common(1)[0][0] == "content.public"
    # A few posts are by accounts the ledger never heard of.
    assert any(int(post["subject_id"].removeprefix("user-")) >= 40 for post in posts)
    # Ids widen past a million posts (20,001 subjects), so that they sort as they count.
    assert next(generate_posts(20_000))["record_id"] == "post-000000"
    assert next(generate_posts(20_001))["record_id"] == "post-0000000"


@pytest.fixture
def seeded(ledger: ConsentLedger, tmp_path: Path) -> tuple[Any, Path]:
    posts = tmp_path / "posts.csv"
    return seed_demo(ledger, subjects=SUBJECTS, posts=posts, actor=ACTOR), posts


def test_seed_records_two_builds_before_what_opens_obligations(
    ledger: ConsentLedger, seeded: tuple[Any, Path]
) -> None:
    summary, posts = seeded
    assert summary.posts == SUBJECTS * 50
    assert posts.exists()
    builds = {(b["dataset"], b["version"]): b for b in summary.builds}
    assert set(builds) == {POSTS_BUILD, PROFILES_BUILD}
    assert builds[POSTS_BUILD]["checked"] == summary.posts
    assert 0 < builds[POSTS_BUILD]["records"] < summary.posts
    assert all(b["seq"] < summary.policy_entry for b in summary.builds)
    assert summary.policy_version == 2

    posts_owed = all_obligations(ledger, "posts-train")
    profiles_owed = all_obligations(ledger, "profiles-train")
    assert summary.obligations == {
        "posts-train": len(posts_owed),
        "profiles-train": len(profiles_owed),
    }
    # Every kind of loss the seed makes: later decisions, a minor, an erasure, the policy.
    reasons = {o["reason"] for o in posts_owed}
    assert (
        {"withdrawn", "minor", "erased"} <= reasons <= {"withdrawn", "refused", "minor", "erased"}
    )
    policy_caused = [o for o in profiles_owed if o["cause"] == summary.policy_entry]
    assert policy_caused
    assert {o["reason"] for o in policy_caused} == {"default-deny"}
    assert all(o["cause"] > builds[POSTS_BUILD]["seq"] for o in posts_owed + profiles_owed)
    assert {o["status"] for o in posts_owed + profiles_owed} == {"open"}
    erased = [o for o in posts_owed if o["reason"] == "erased"]
    assert erased
    assert all(o["record_id"].startswith("post-") for o in erased)  # kept until purged
    assert summary.erased is not None
    ledger.verify()


def test_seeding_again_adds_nothing(ledger: ConsentLedger, seeded: tuple[Any, Path]) -> None:
    summary, posts = seeded
    written = posts.read_bytes()
    again = seed_demo(ledger, subjects=SUBJECTS, posts=posts, actor=ACTOR)
    assert again.already_seeded
    assert again.builds == []
    assert again.tree_size == summary.tree_size == ledger.tree_size()
    assert again.obligations == summary.obligations
    assert posts.read_bytes() == written
