"""Deterministic, realistic consent data: `consent-ledger demo seed`, benchmarks and tests.

`generate_rows(count, seed=...)` yields exactly `count` rows in the import
format (`ledger.importing.FIELDS`), every one of them valid, so that a file
written by `write_csv` or `write_jsonl` imports without `--skip-invalid`.
The same seed always gives the same rows, byte for byte.

The mix is meant to look like a platform's consent export:

- subjects `user-00000000`, `user-00000001`, ... with 1–6 rows each, the
  first row carrying the subject's jurisdiction (DE, FR, US, BR or none) and
  minor flag (about 4 % minors);
- about 5 % registration-only rows (no decision) and a few later rows that
  change a subject's jurisdiction;
- grants, denials and withdrawals across the default policy's categories and
  purposes, biased towards `ai-training` and `content.public`;
- biometric grants are explicit (GDPR Art. 9), except for a few that are not
  and so stay ineligible;
- some decisions carry an effective time in the past, an expiry in the
  future, a collection method and a notice version.

`seed_demo` is `demo seed`: that population imported in two halves, with
`posts.csv` (the platform's posts, each with a stable `record_id`) written
and two training datasets recorded from the first half (SPEC §7) before
later withdrawals, refusals, a subject turning out to be a minor, an erasure
and a policy change, so that the ledger then holds purge obligations.
"""

from __future__ import annotations

import csv
import itertools
import random
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ledger.consent.policy import Policy, default_policy
from ledger.errors import Conflict
from ledger.importing import FIELDS
from ledger.importing.run import ImportSummary
from ledger.service import BuildItem, ConsentLedger

Row = dict[str, str]

JURISDICTIONS: tuple[tuple[str, int], ...] = (
    ("DE", 22),
    ("FR", 14),
    ("US", 34),
    ("BR", 15),
    ("", 15),  # no jurisdiction recorded
)
DECISIONS: tuple[tuple[str, int], ...] = (("granted", 58), ("denied", 27), ("withdrawn", 15))
METHODS = ("", "", "web-form", "mobile-app", "email", "support:ticket")
NOTICES = ("", "", "privacy-notice-2024-01", "privacy-notice-2025-06", "ai-addendum-v2")
MINOR_SHARE = 0.04
REGISTRATION_ONLY_SHARE = 0.05
MOVE_SHARE = 0.01


def _weighted(rng: random.Random, table: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([value for value, _ in table], [weight for _, weight in table])[0]


def _timestamp(rng: random.Random, first_year: int, last_year: int) -> str:
    return (
        f"{rng.randint(first_year, last_year)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        f"T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"
    )


class _Picker:
    """Category and purpose choices, weighted towards what platforms ask about most."""

    def __init__(self, policy: Policy) -> None:
        self.categories = list(policy.categories)
        self.category_weights = [
            12 if name == "content.public" else 6 if name in ("profile", "activity") else 2
            for name in self.categories
        ]
        self.purposes = list(policy.purposes)
        self.purpose_weights = [10 if name == "ai-training" else 2 for name in self.purposes]
        self.special = {name for name in self.categories if policy.is_special(name)}

    def category(self, rng: random.Random) -> str:
        return rng.choices(self.categories, self.category_weights)[0]

    def purpose(self, rng: random.Random) -> str:
        purpose = rng.choices(self.purposes, self.purpose_weights)[0]
        # A blank purpose means the default (ai-training): exercise both spellings.
        return "" if purpose == "ai-training" and rng.random() < 0.5 else purpose


def _decision_row(rng: random.Random, picker: _Picker, subject_id: str, head: Row | None) -> Row:
    row = dict.fromkeys(FIELDS, "")
    row["subject_id"] = subject_id
    if head is not None:
        row["jurisdiction"] = head["jurisdiction"]
        row["minor"] = head["minor"]
    category = picker.category(rng)
    decision = _weighted(rng, DECISIONS)
    row["category"] = category
    row["purpose"] = picker.purpose(rng)
    row["decision"] = decision
    if category in picker.special and decision == "granted":
        row["explicit"] = "true" if rng.random() < 0.9 else "false"
    elif rng.random() < 0.1:
        row["explicit"] = "true"
    if rng.random() < 0.3:
        row["effective"] = _timestamp(rng, 2023, 2025)
    if decision == "granted" and rng.random() < 0.1:
        row["expires"] = _timestamp(rng, 2031, 2035)
    row["method"] = rng.choice(METHODS)
    row["notice"] = rng.choice(NOTICES)
    return row


def generate_rows(
    count: int, *, seed: int = 20_261_126, policy: Policy | None = None
) -> Iterator[Row]:
    """Exactly `count` valid import rows (all FIELDS present, blanks as "")."""
    rng = random.Random(seed)
    picker = _Picker(policy or default_policy())
    emitted = 0
    subject = 0
    while emitted < count:
        subject_id = f"user-{subject:08d}"
        subject += 1
        head = dict.fromkeys(FIELDS, "")
        head["subject_id"] = subject_id
        head["jurisdiction"] = _weighted(rng, JURISDICTIONS)
        head["minor"] = "true" if rng.random() < MINOR_SHARE else rng.choice(("false", ""))
        rows_for_subject = rng.choice((1, 2, 2, 3, 3, 3, 4, 5, 6))
        for position in range(rows_for_subject):
            if emitted >= count:
                return
            if position == 0 and rng.random() < REGISTRATION_ONLY_SHARE:
                yield head
            elif position > 0 and rng.random() < MOVE_SHARE:
                # The subject moved: a registration row with a new jurisdiction.
                moved = dict(head)
                moved["jurisdiction"] = _weighted(rng, JURISDICTIONS)
                yield moved
            else:
                yield _decision_row(rng, picker, subject_id, head if position == 0 else None)
            emitted += 1


def write_csv(path: Path, count: int, *, seed: int = 20_261_126) -> Path:
    """Write `count` rows as CSV with a header row; returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(FIELDS)
        for row in generate_rows(count, seed=seed):
            writer.writerow([row[name] for name in FIELDS])
    return path


def write_jsonl(path: Path, count: int, *, seed: int = 20_261_126) -> Path:
    """Write `count` rows as JSON Lines (blank fields left out); returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        for row in generate_rows(count, seed=seed):
            handle.write(orjson.dumps({k: v for k, v in row.items() if v}) + b"\n")
    return path


def cached_csv(directory: Path, count: int, *, seed: int = 20_261_126) -> Path:
    """A CSV of `count` rows in `directory`, generated once and reused."""
    path = directory / f"consents-{count}-{seed}.csv"
    if not path.exists():
        partial = path.with_suffix(".partial")
        write_csv(partial, count, seed=seed)
        partial.replace(path)
    return path


def demo_policy_change(policy: Policy) -> Policy:
    """The demo's mid-way policy change, where no consent law requires opt-in: the
    platform starts using public posts as model input (RAG, inference) by default,
    and stops training on education history without consent (its members in
    datasets built before now owe a purge)."""
    document = policy.to_document()
    document["version"] = policy.version + 1
    defaults = document["defaults"].setdefault("default", {})
    defaults.setdefault("ai-inference", {})["content.public"] = "allow"
    defaults.setdefault("ai-training", {})["profile.education"] = "deny"
    return Policy.from_document(document)


# --- posts and profiles: the platform's data, for datasets ----------------------------------

POSTS_FIELDS = ("record_id", "subject_id", "category", "text")
POSTS_PER_SUBJECT = 50
# What a post is: mostly public, some protected or direct messages ("not DMs": never
# eligible), some photos with a face in them (biometric: explicit consent only).
POST_CATEGORIES: tuple[tuple[str, int], ...] = (
    ("content.public", 74),
    ("content.private", 10),
    ("content.private.messages", 6),
    ("biometric.face", 10),
)
# Posts by accounts the ledger never heard of (deleted before consent was asked).
UNKNOWN_AUTHOR_SHARE = 0.02
# A profile is its basics, often the job history, sometimes the education.
EMPLOYMENT_SHARE = 0.6
EDUCATION_SHARE = 0.4
# After the datasets are built: how many of their subjects withdraw or refuse.
WITHDRAWAL_SHARE = 0.04
REFUSAL_SHARE = 0.02
# The datasets `demo seed` records, and the items a build checks at a time.
POSTS_BUILD = ("posts-train", "1")
PROFILES_BUILD = ("profiles-train", "1")
BUILD_CHUNK = 10_000
# `generate_rows` gives 1-6 rows per subject, 3.2 on average.
ROWS_PER_SUBJECT = 3.2


def generate_posts(subjects: int, *, seed: int = 20_261_126) -> Iterator[Row]:
    """`subjects × POSTS_PER_SUBJECT` posts (`POSTS_FIELDS`) by the seeded subjects
    `user-00000000`…, a few by unknown accounts; `record_id` is `post-000000`…"""
    rng = random.Random(f"posts-{seed}")
    categories = [name for name, _ in POST_CATEGORIES]
    weights = [weight for _, weight in POST_CATEGORIES]
    count = subjects * POSTS_PER_SUBJECT
    width = max(6, len(str(count - 1)))
    for number in range(count):
        if rng.random() < UNKNOWN_AUTHOR_SHARE:
            author = subjects + rng.randrange(max(1, subjects // 10))
        else:
            author = rng.randrange(subjects)
        yield {
            "record_id": f"post-{number:0{width}d}",
            "subject_id": f"user-{author:08d}",
            "category": rng.choices(categories, weights)[0],
            "text": f"post {number}",
        }


def write_posts(path: Path, subjects: int, *, seed: int = 20_261_126) -> int:
    """Write `generate_posts` as CSV with a header row; returns how many posts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(POSTS_FIELDS)
        for post in generate_posts(subjects, seed=seed):
            writer.writerow([post[name] for name in POSTS_FIELDS])
            written += 1
    return written


def profile_items(subject_ids: Iterable[str], *, seed: int = 20_261_126) -> Iterator[BuildItem]:
    """One profile record per subject, `profile-<subject id>`: `profile`, and often
    `profile.employment` and `profile.education` too (a record of several categories)."""
    rng = random.Random(f"profiles-{seed}")
    for line, subject_id in enumerate(subject_ids, start=1):
        categories = ["profile"]
        if rng.random() < EMPLOYMENT_SHARE:
            categories.append("profile.employment")
        if rng.random() < EDUCATION_SHARE:
            categories.append("profile.education")
        yield BuildItem(line, f"profile-{subject_id}", subject_id, categories)


def post_items(path: Path) -> Iterator[BuildItem]:
    """The posts of a `posts.csv` as build items (line numbers as in the file)."""
    with path.open(newline="", encoding="utf-8") as handle:
        for line, post in enumerate(csv.DictReader(handle), start=2):
            yield BuildItem(line, post["record_id"], post["subject_id"], post["category"])


# --- demo seed ----------------------------------------------------------------------------


@dataclass
class DemoSeed:
    """What `demo seed` did (`to_json` is what `demo seed --json` prints)."""

    rows: int = 0
    entries: int = 0
    policy_version: int | None = None
    policy_entry: int | None = None
    already_seeded: bool = False
    tree_size: int = 0
    posts: int = 0
    builds: list[dict[str, Any]] = field(default_factory=list)
    erased: str | None = None
    obligations: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "entries": self.entries,
            "policy_version": self.policy_version,
            "policy_entry": self.policy_entry,
            "already_seeded": self.already_seeded,
            "tree_size": self.tree_size,
            "posts": self.posts,
            "builds": self.builds,
            "erased": self.erased,
            "open_obligations": self.obligations,
        }


@dataclass
class _Subject:
    """A seeded subject as the import rows left it."""

    jurisdiction: str
    minor: bool


def _write_rows(path: Path, rows: Iterable[Row]) -> dict[str, _Subject]:
    """Write import rows as CSV; return the subjects they register, as they leave them."""
    subjects: dict[str, _Subject] = {}
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(FIELDS)
        for row in rows:
            writer.writerow([row[name] for name in FIELDS])
            if row["jurisdiction"] or row["minor"] or row["subject_id"] not in subjects:
                known = subjects.get(row["subject_id"])
                subjects[row["subject_id"]] = _Subject(
                    row["jurisdiction"] or (known.jurisdiction if known else ""),
                    row["minor"] == "true" or bool(known and known.minor),
                )
    return subjects


def _later_rows(
    subjects: dict[str, _Subject], *, seed: int, minor: str | None, erased: str | None
) -> Iterator[Row]:
    """After the datasets were built: some of their subjects withdraw consent to AI
    training, some refuse it for public posts, and one turns out to be a minor (the
    one to be erased is left alone, so that its records owe a purge for that)."""
    rng = random.Random(f"later-{seed}")
    for subject_id in sorted(subjects):
        draw = rng.random()
        if subject_id == erased:
            continue
        row = dict.fromkeys(FIELDS, "")
        row["subject_id"] = subject_id
        if subject_id == minor:
            row["jurisdiction"] = subjects[subject_id].jurisdiction
            row["minor"] = "true"
            row["method"] = "support:ticket"
            yield row
            continue
        if draw < WITHDRAWAL_SHARE:
            row.update(category="*", purpose="ai-training", decision="withdrawn", method="web-form")
            yield row
        elif draw < WITHDRAWAL_SHARE + REFUSAL_SHARE:
            row.update(category="content.public", decision="denied", method="mobile-app")
            yield row


def _opt_out_adults(subjects: dict[str, _Subject]) -> Iterator[str]:
    """Subjects the opt-out default covers (US, BR) who are adults, in id order."""
    for subject_id in sorted(subjects):
        subject = subjects[subject_id]
        if subject.jurisdiction in ("US", "BR") and not subject.minor:
            yield subject_id


def _record(
    ledger: ConsentLedger,
    build: tuple[str, str],
    items: Iterator[BuildItem],
    *,
    actor: str,
    progress: Callable[[str, int], None],
) -> dict[str, Any] | None:
    """Record a build for AI training; None if it was recorded already."""
    dataset, version = build
    stage = f"recording {dataset}@{version}"
    try:
        recorder = ledger.dataset_recorder(dataset, version, actor=actor, purpose="ai-training")
    except Conflict:
        return None
    with recorder:
        checked = 0
        while chunk := list(itertools.islice(items, BUILD_CHUNK)):
            recorder.check(chunk)
            checked += len(chunk)
            progress(stage, checked)
        recorded = recorder.finish()
    return {
        "dataset": dataset,
        "version": version,
        "seq": recorded.summary.seq,
        "checked": recorded.summary.lines,
        "records": recorded.summary.records,
    }


def seed_demo(
    ledger: ConsentLedger,
    *,
    subjects: int,
    posts: Path,
    actor: str,
    seed: int = 20_261_126,
    progress: Callable[[str, int], None] | None = None,
) -> DemoSeed:
    """`demo seed`: a synthetic population, `posts.csv`, two datasets, what follows.

    1. The first half of the population is imported; `posts` is written.
    2. `posts-train@1` (the posts) and `profiles-train@1` (the first half's
       profiles) are recorded for AI training.
    3. The policy changes (`demo_policy_change`), the second half is imported,
       then later decisions of the first half (withdrawals, refusals, a minor),
       and one of its subjects is erased: obligations to purge open.
    Seeding the same population again adds nothing (imports are idempotent).
    """
    report = progress or (lambda stage, done: None)
    summary = DemoSeed()
    total = max(1, round(subjects * ROWS_PER_SUBJECT))
    half = max(1, round(total / 2))
    rows = generate_rows(total, seed=seed)

    def imported(path: Path) -> ImportSummary:
        # Seeding again finds each file imported already; rows of the subject erased
        # since are invalid by then, and skipped rather than refusing the file.
        result = ledger.import_file(
            path, actor=actor, skip_invalid=True, progress=lambda n: report("importing", n)
        )
        summary.rows += result.rows
        summary.entries += result.entries
        return result

    with tempfile.TemporaryDirectory(prefix="consent-ledger-demo-") as scratch:
        first, second, later = (Path(scratch) / name for name in ("1.csv", "2.csv", "3.csv"))
        seeded = _write_rows(first, itertools.islice(rows, half))
        _write_rows(second, rows)
        before = imported(first)
        summary.posts = write_posts(posts, subjects, seed=seed)
        adults = _opt_out_adults(seeded)
        minor, erased = next(adults, None), next(adults, None)
        if not before.already_imported:
            for build, items in (
                (POSTS_BUILD, post_items(posts)),
                (PROFILES_BUILD, profile_items(sorted(seeded), seed=seed)),
            ):
                recorded = _record(ledger, build, items, actor=actor, progress=report)
                if recorded is not None:
                    summary.builds.append(recorded)
            changed = demo_policy_change(ledger.current_policy())
            published = ledger.publish_policy(changed, actor=actor)
            summary.policy_version = changed.version
            summary.policy_entry = published.entries[0].seq
        imported(second)
        _write_rows(later, _later_rows(seeded, seed=seed, minor=minor, erased=erased))
        after = imported(later)
    summary.already_seeded = before.already_imported and after.already_imported
    if erased is not None and not before.already_imported:
        ledger.erase_subject(erased, actor=actor)
        summary.erased = erased
    # Work out every obligation now (a policy's may be left to the background), so that
    # listing them right after the seed does not answer "catching up".
    ledger.sweep_obligations()
    for listed in ledger.dataset_builds():
        # `open` counts the overdue ones too.
        dataset = listed["dataset"]
        summary.obligations[dataset] = (
            summary.obligations.get(dataset, 0) + listed["obligations"]["open"]
        )
    summary.tree_size = ledger.tree_size()
    return summary
