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
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from pathlib import Path

import orjson

from ledger.consent.policy import Policy, default_policy
from ledger.importing import FIELDS

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
    """The demo's mid-way policy change: the platform starts using public posts as
    model input (RAG, inference) by default where no consent law requires opt-in."""
    document = policy.to_document()
    document["version"] = policy.version + 1
    defaults = document["defaults"].setdefault("default", {})
    defaults.setdefault("ai-inference", {})["content.public"] = "allow"
    return Policy.from_document(document)
