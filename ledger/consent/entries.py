"""Every kind of entry the ledger writes, and the one way to build each kind's data.

The log kernel (`ledger.tlog`) hashes, signs and stores entries of any kind; what a
kind means is defined here. Every write path (the service, an import's batches,
`init`) builds its entries with these constructors, so an entry of a kind has one
shape whoever wrote it. To add a kind: a member of `EntryKind`, its constructor
here, and the code that reacts to it (the projection, `verify`, reports).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, NamedTuple

from ledger.consent.decisions import ConsentTerms
from ledger.consent.policy import Policy


class EntryKind(StrEnum):
    """An entry's `kind`. A `StrEnum`, so a kind read back from canonical bytes (a
    plain string) compares, hashes and looks up equal to its member."""

    LEDGER_INITIALIZED = "ledger.initialized"
    KEY_ADDED = "key.added"
    KEY_RETIRED = "key.retired"
    POLICY_PUBLISHED = "policy.published"
    SUBJECT_REGISTERED = "subject.registered"
    SUBJECT_UPDATED = "subject.updated"
    CONSENT_RECORDED = "consent.recorded"
    SUBJECT_ERASED = "subject.erased"
    DATASET_RECORDED = "dataset.recorded"
    DATASET_PURGED = "dataset.purged"
    DATASET_RETIRED = "dataset.retired"


def _texts(*kinds: EntryKind) -> frozenset[str]:
    # Plain strings, not members: the log and `verify` look kinds up once per entry, and a
    # plain string compares faster than a member.
    return frozenset(kind.value for kind in kinds)


KINDS = _texts(*EntryKind)
# The kinds that change the log's key chain (`verify` follows them).
KEY_KINDS = _texts(EntryKind.LEDGER_INITIALIZED, EntryKind.KEY_ADDED, EntryKind.KEY_RETIRED)
# The kinds that change a subject's attributes (a row of `subject_versions`).
SUBJECT_STATE_KINDS = _texts(
    EntryKind.SUBJECT_REGISTERED, EntryKind.SUBJECT_UPDATED, EntryKind.SUBJECT_ERASED
)
# The kinds whose `data.subject` names a subject reference: the log stores it beside
# the entry (`subject_of`), so that a subject's history is one indexed read.
SUBJECT_KINDS = SUBJECT_STATE_KINDS | _texts(EntryKind.CONSENT_RECORDED)
# The kinds about dataset builds (SPEC §7): their members and purges live outside the log.
DATASET_KINDS = _texts(
    EntryKind.DATASET_RECORDED, EntryKind.DATASET_PURGED, EntryKind.DATASET_RETIRED
)


def subject_of(kind: str, data: Mapping[str, Any]) -> str | None:
    """The subject reference an entry concerns, or None: the log's `SubjectOf` hook."""
    if kind in SUBJECT_KINDS:
        subject: str | None = data.get("subject")
        return subject
    return None


class Entry(NamedTuple):
    """An entry to append: `writer.append(*entry)`."""

    kind: EntryKind
    data: dict[str, Any]


# --- the ledger and its keys ------------------------------------------------------------


def ledger_initialized(origin: str, verifier_key: str) -> Entry:
    return Entry(EntryKind.LEDGER_INITIALIZED, {"origin": origin, "verifier_key": verifier_key})


def key_added(verifier_key: str) -> Entry:
    return Entry(EntryKind.KEY_ADDED, {"verifier_key": verifier_key})


def key_retired(verifier_key: str) -> Entry:
    return Entry(EntryKind.KEY_RETIRED, {"verifier_key": verifier_key})


def policy_published(policy: Policy) -> Entry:
    return Entry(
        EntryKind.POLICY_PUBLISHED, {"version": policy.version, "policy": policy.to_document()}
    )


# --- subjects and their decisions --------------------------------------------------------


def subject_registered(ref: str, commitment: str, jurisdiction: str | None, minor: bool) -> Entry:
    return Entry(
        EntryKind.SUBJECT_REGISTERED,
        {"subject": ref, "commitment": commitment, "jurisdiction": jurisdiction, "minor": minor},
    )


def subject_changes(
    current: Mapping[str, Any],
    jurisdiction: str | None,
    minor: bool | None,
    *,
    jurisdiction_given: bool = True,
) -> dict[str, Any]:
    """The attributes that differ from a subject's `current` row: what `subject.updated`
    states. Not given (`minor` None, `jurisdiction_given` False) means unchanged."""
    changed: dict[str, Any] = {}
    if jurisdiction_given and jurisdiction != current["jurisdiction"]:
        changed["jurisdiction"] = jurisdiction
    if minor is not None and minor != current["minor"]:
        changed["minor"] = minor
    return changed


def subject_updated(ref: str, changes: Mapping[str, Any]) -> Entry:
    """`changes` from `subject_changes` (only what changed, never empty)."""
    return Entry(EntryKind.SUBJECT_UPDATED, {"subject": ref, **changes})


def consent_recorded(ref: str, terms: ConsentTerms) -> Entry:
    return Entry(
        EntryKind.CONSENT_RECORDED,
        {
            "subject": ref,
            "category": terms.category,
            "purpose": terms.purpose,
            "decision": terms.decision,
            "explicit": terms.explicit,
            "method": terms.method,
            "notice": terms.notice,
            "effective": terms.effective,
            "expires": terms.expires,
        },
    )


def subject_erased(ref: str) -> Entry:
    return Entry(EntryKind.SUBJECT_ERASED, {"subject": ref})


# --- dataset builds (SPEC §7) ------------------------------------------------------------


def dataset_recorded(
    dataset: str,
    version: str,
    *,
    purpose: str,
    checked_at: int,
    at: str,
    policy_version: int,
    records: int,
    members_root: str,
) -> Entry:
    """A build: its members' RFC 9162 root (base64), over leaves in record-id byte order."""
    return Entry(
        EntryKind.DATASET_RECORDED,
        {
            "dataset": dataset,
            "version": version,
            "purpose": purpose,
            "checked_at": checked_at,
            "at": at,
            "policy_version": policy_version,
            "records": records,
            "members_root": members_root,
        },
    )


def dataset_purged(
    dataset: str, version: str, *, records: int, purged_root: str, fulfils: int
) -> Entry:
    """Records removed from a build; `fulfils` of them closed an obligation."""
    return Entry(
        EntryKind.DATASET_PURGED,
        {
            "dataset": dataset,
            "version": version,
            "records": records,
            "purged_root": purged_root,
            "fulfils": fulfils,
        },
    )


def dataset_retired(dataset: str, version: str) -> Entry:
    """A whole build deleted everywhere; its open obligations close as fulfilled."""
    return Entry(EntryKind.DATASET_RETIRED, {"dataset": dataset, "version": version})
