"""Dataset builds, purges and member proofs (SPEC §7) as a platform sees them.

What the client's dataset calls return, and how each answer is checked against
the signed entry it comes with: a build's summary against its `dataset.recorded`
entry, a purge against its `dataset.purged` entry (whose `purged_root` the client
recomputes from the record ids it asked to purge), and a member proof, which
`verify_member_proof` checks offline with nothing but the ledger's verifier key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from consent_ledger_client._kernel.errors import InvalidInput
from consent_ledger_client._kernel.errors import VerificationError as KernelVerificationError
from consent_ledger_client._kernel.tlog import merkle
from consent_ledger_client._kernel.tlog.canonical import canonical_bytes
from consent_ledger_client._kernel.tlog.evidence import EvidenceBundle, verify_bundle
from consent_ledger_client._kernel.tlog.notes import Checkpoint, VerifierKey, b64, unb64
from consent_ledger_client.errors import VerificationError
from consent_ledger_client.trust import parse_verifier_keys

if TYPE_CHECKING:
    from consent_ledger_client.core import VerifiedBundle

__all__ = [
    "BuildRecording",
    "MemberProof",
    "PurgeResult",
    "RecordedBuild",
    "verify_member_proof",
]

# What an item of a build may carry; anything else in a mapping stays home.
ITEM_FIELDS = ("record_id", "subject_id", "category", "purpose")
# The fields of a member's leaf (SPEC §7.1), hashed as canonical JSON.
LEAF_FIELDS = frozenset({"category", "purpose", "record", "subject"})
# What a `dataset.recorded` entry says about its build, that the build's summary repeats.
RECORDED_FIELDS = (
    "dataset",
    "version",
    "purpose",
    "checked_at",
    "at",
    "policy_version",
    "records",
    "members_root",
)


def item_line(item: object, position: int) -> tuple[bytes, str | None]:
    """A build item as its NDJSON line, and its record id as the ledger will name it.

    An item is a mapping with `record_id`, `subject_id`, `category` (a name, a
    `|`-joined string or a list of names) and optionally `purpose`, or a tuple
    `(record_id, subject_id, category)`. Missing or malformed values are the
    ledger's to refuse: it answers that item with an error line.
    """
    if isinstance(item, Mapping):
        body = {name: item[name] for name in ITEM_FIELDS if item.get(name) is not None}
    elif isinstance(item, tuple | list) and len(item) == 3:
        body = dict(zip(ITEM_FIELDS, item, strict=False))
    else:
        raise TypeError(
            f"build item {position} is a {type(item).__name__}: give a mapping with "
            "record_id, subject_id and category, or a (record_id, subject_id, category) tuple"
        )
    record_id = body.get("record_id")
    if isinstance(record_id, int) and not isinstance(record_id, bool):
        record_id = str(record_id)  # the ledger accepts integer ids, as text
    try:
        line = orjson.dumps(body) + b"\n"
    except orjson.JSONEncodeError as exc:
        raise TypeError(f"build item {position} is not JSON: {exc}") from exc
    return line, record_id if isinstance(record_id, str) else None


@dataclass(frozen=True, slots=True)
class RecordedBuild:
    """A recorded build: its summary as the ledger sent it (`build`), checked against
    `receipt`, the verified evidence bundle of its `dataset.recorded` entry."""

    build: dict[str, Any]
    receipt: VerifiedBundle
    document: dict[str, Any] = field(repr=False)

    @property
    def entry(self) -> dict[str, Any]:
        """The signed `dataset.recorded` entry."""
        return self.receipt.entries[0]

    @property
    def seq(self) -> int:
        seq: int = self.entry["seq"]
        return seq

    @property
    def records(self) -> int:
        """How many members the build holds: the records found eligible."""
        records: int = self.entry["data"]["records"]
        return records

    @property
    def members_root(self) -> str:
        root: str = self.entry["data"]["members_root"]
        return root

    @property
    def checkpoint(self) -> Checkpoint:
        return self.receipt.checkpoint


@dataclass
class BuildRecording:
    """A build being recorded: iterate it for the ledger's answer to each item, in
    order; once it is exhausted, `recorded` holds the build and its verified receipt.

    Nothing is sent before the first `next()` (see `ConsentLedgerClient.record_build`
    for when a build is recorded). An answer is
    ``{"line","record_id","eligible","reason","decided_by"}``,
    or ``{"line","error":{"field","message"}}`` for an item the ledger could not
    check. `members`, `dropped` (by reason) and `errors` count the answers so far.
    """

    dataset: str
    version: str
    _answers: Iterator[dict[str, Any]] = field(repr=False)
    recorded: RecordedBuild | None = None
    members: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    errors: int = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        return next(self._answers)

    @property
    def answered(self) -> int:
        return self.members + sum(self.dropped.values()) + self.errors

    def count(self, answer: dict[str, Any]) -> None:
        if "error" in answer:
            self.errors += 1
        elif answer.get("eligible") is True:
            self.members += 1
        else:
            self.dropped[str(answer.get("reason"))] += 1

    def finish(self) -> RecordedBuild:
        """Read the rest of the answer; the recorded build."""
        for _ in self:
            pass
        if self.recorded is None:  # pragma: no cover - the iteration raises instead
            raise RuntimeError("the build's answer ended without the build")
        return self.recorded


def check_recorded(
    final: Mapping[str, Any],
    bundle: VerifiedBundle,
    *,
    dataset: str,
    version: str,
    purpose: str,
    members: int,
    as_of: int | None,
) -> dict[str, Any]:
    """The build's last line must be the build asked for, and its receipt the
    `dataset.recorded` entry that says so, holding exactly the members answered eligible."""
    build = final.get("build")
    if not isinstance(build, dict):
        raise VerificationError("the build's last line has no `build` object", document=final)
    entries = bundle.entries
    if len(entries) != 1 or entries[0].get("kind") != "dataset.recorded":
        kinds = [entry.get("kind") for entry in entries]
        raise VerificationError(
            f"a build's receipt holds one dataset.recorded entry, not {kinds}", document=final
        )
    entry = entries[0]
    data = entry.get("data", {})
    subject = f"entry {entry.get('seq')}"
    asked = {"dataset": dataset, "version": version, "purpose": purpose, "records": members}
    if as_of is not None:
        asked["checked_at"] = as_of
    for name, value in asked.items():
        if data.get(name) != value:
            raise VerificationError(
                f"the receipt records {name} {data.get(name)!r}, not {value!r}"
                + (" (the members answered eligible)" if name == "records" else ""),
                subject=subject,
                document=final,
            )
    if build.get("seq") != entry.get("seq"):
        raise VerificationError(
            f"the build says entry {build.get('seq')!r}, its receipt holds entry "
            f"{entry.get('seq')}",
            subject=subject,
            document=final,
        )
    for name in RECORDED_FIELDS:
        if build.get(name) != data.get(name):
            raise VerificationError(
                f"the build says {name} {build.get(name)!r}, its signed entry {data.get(name)!r}",
                subject=subject,
                document=final,
            )
    return build


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """A verified purge: `records` removed from the build, `fulfils` of them closing an
    open obligation, `voluntary` the others; `receipt` proves the `dataset.purged` entry
    at `seq`, whose `purged_root` the client recomputed from the record ids it sent."""

    dataset: str
    version: str
    seq: int
    records: int
    fulfils: int
    voluntary: int
    purged_root: str
    receipt: VerifiedBundle
    document: dict[str, Any] = field(repr=False)


def purged_root(record_ids: Iterable[str]) -> str:
    """The `purged_root` of purging these records: RFC 9162 root over canonical
    `{"record"}` leaves in record-id byte order (SPEC §2.1)."""
    tree = merkle.TreeBuilder()
    for record_id in sorted(set(record_ids), key=lambda r: r.encode("utf-8")):
        tree.append(merkle.leaf_hash(canonical_bytes({"record": record_id})))
    return b64(tree.root())


def check_purged(
    document: Mapping[str, Any],
    bundle: VerifiedBundle,
    *,
    dataset: str,
    version: str,
    record_ids: Sequence[str],
) -> PurgeResult:
    """The purge's answer and its receipt must both say: these records left this build."""
    entries = bundle.entries
    if len(entries) != 1 or entries[0].get("kind") != "dataset.purged":
        kinds = [entry.get("kind") for entry in entries]
        raise VerificationError(
            f"a purge's receipt holds one dataset.purged entry, not {kinds}", document=document
        )
    entry = entries[0]
    data = entry.get("data", {})
    subject = f"entry {entry.get('seq')}"
    expected = {
        "dataset": dataset,
        "version": version,
        "records": len(set(record_ids)),
        "purged_root": purged_root(record_ids),
    }
    for name, value in expected.items():
        if data.get(name) != value:
            raise VerificationError(
                f"the receipt's dataset.purged says {name} {data.get(name)!r}, not {value!r} "
                "(the records asked to be purged)",
                subject=subject,
                document=document,
            )
    claimed = {name: document.get(name) for name in ("records", "fulfils", "purged_root")}
    signed = {name: data.get(name) for name in claimed}
    if claimed != signed or document.get("seq") != entry.get("seq"):
        raise VerificationError(
            f"the purge's answer ({claimed}, entry {document.get('seq')!r}) differs from its "
            f"signed entry ({signed}, entry {entry.get('seq')})",
            subject=subject,
            document=document,
        )
    records, fulfils = data["records"], data.get("fulfils")
    if not isinstance(fulfils, int) or document.get("voluntary") != records - fulfils:
        raise VerificationError(
            f"voluntary {document.get('voluntary')!r} is not records {records} - fulfils "
            f"{fulfils!r}",
            subject=subject,
            document=document,
        )
    return PurgeResult(
        dataset=dataset,
        version=version,
        seq=entry["seq"],
        records=records,
        fulfils=fulfils,
        voluntary=records - fulfils,
        purged_root=data["purged_root"],
        receipt=bundle,
        document=dict(document),
    )


# --- member proofs ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberProof:
    """A verified proof that `leaf` is member `index` of the `records` members of a
    build whose `dataset.recorded` entry (`entry`, verified) signs their root.

    `document` is the proof as received: anyone can check it offline with
    `verify_member_proof(document, verifier_key)`.
    """

    dataset: str
    version: str
    leaf: dict[str, Any]
    index: int
    records: int
    hashes: tuple[str, ...]
    entry: VerifiedBundle
    document: dict[str, Any] = field(repr=False)

    @property
    def record_id(self) -> str:
        record: str = self.leaf["record"]
        return record

    @property
    def members_root(self) -> str:
        root: str = self.entry.entries[0]["data"]["members_root"]
        return root


@dataclass(frozen=True, slots=True)
class _ProofParts:
    dataset: str
    version: str
    leaf: dict[str, Any]
    index: int
    records: int
    hashes: tuple[bytes, ...]


def _proof_parts(proof: object) -> _ProofParts:
    """1. The proof has a member proof's fields, with their types."""

    def refuse(message: str) -> VerificationError:
        return VerificationError(f"not a member proof: {message}", subject="member proof")

    if not isinstance(proof, dict):
        raise refuse("not a JSON object")
    for name in ("dataset", "version"):
        if not isinstance(proof.get(name), str):
            raise refuse(f"`{name}` is not a string")
    for name in ("index", "records"):
        value = proof.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise refuse(f"`{name}` is not an integer")
    leaf = proof.get("leaf")
    if not isinstance(leaf, dict) or set(leaf) != LEAF_FIELDS:
        raise refuse(f"`leaf` is not an object of {sorted(LEAF_FIELDS)}")
    category = leaf["category"]
    if not (
        isinstance(category, str)
        or (isinstance(category, list) and category and all(isinstance(c, str) for c in category))
    ):
        raise refuse("the leaf's `category` is not a name or a list of names")
    if not all(isinstance(leaf[name], str) for name in ("purpose", "record", "subject")):
        raise refuse("the leaf's `purpose`, `record` and `subject` must be strings")
    hashes = proof.get("hashes")
    if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
        raise refuse("`hashes` is not a list of base64 hashes")
    try:
        decoded = tuple(unb64(h, field="hashes") for h in hashes)
    except InvalidInput as exc:
        raise refuse(str(exc)) from exc
    if not isinstance(proof.get("entry"), dict):
        raise refuse("`entry` is not an evidence bundle")
    return _ProofParts(
        proof["dataset"], proof["version"], leaf, proof["index"], proof["records"], decoded
    )


def _check_member(parts: _ProofParts, entries: Sequence[dict[str, Any]], document: Any) -> None:
    # 3. The bundle's one entry is the `dataset.recorded` of this build, of `records` members.
    if len(entries) != 1 or entries[0].get("kind") != "dataset.recorded":
        kinds = [entry.get("kind") for entry in entries]
        raise VerificationError(
            f"a member proof's entry is one dataset.recorded, not {kinds}",
            subject="member proof",
            document=document,
        )
    entry = entries[0]
    data = entry.get("data", {})
    subject = f"entry {entry.get('seq')}"
    claimed = {
        "dataset": parts.dataset,
        "version": parts.version,
        "records": parts.records,
        "purpose": parts.leaf["purpose"],
    }
    for name, value in claimed.items():
        if data.get(name) != value:
            raise VerificationError(
                f"the proof says {name} {value!r}, the signed entry {data.get(name)!r}",
                subject=subject,
                document=document,
            )
    root = data.get("members_root")
    # 4. The leaf's RFC 9162 hash at `index` leads to the signed `members_root`.
    try:
        leaf = merkle.leaf_hash(canonical_bytes(parts.leaf))
        merkle.verify_inclusion(
            leaf, parts.index, parts.records, parts.hashes, unb64(str(root), field="members_root")
        )
    except (InvalidInput, KernelVerificationError) as exc:
        raise VerificationError(
            f"record {parts.leaf['record']!r} is not proven a member of "
            f"{parts.dataset}@{parts.version}: {exc}",
            subject="member proof",
            document=document,
        ) from exc


def verify_member_proof(
    proof: Any, verifier_key: str | VerifierKey | Sequence[str | VerifierKey]
) -> None:
    """Check a member proof (`GET …/members/{record_id}/proof`) offline.

    Needs nothing but the ledger's verifier key (or keys, after a rotation).
    Returns None when the proof shows that its `leaf` (record, subject ref,
    category, purpose) is a member of the build; raises `VerificationError`
    naming what fails otherwise.
    """
    keys = parse_verifier_keys(verifier_key)
    parts = _proof_parts(proof)
    # 2. The `dataset.recorded` entry is in the log: a checkpoint signed by a trusted
    #    key, and the entry's inclusion proof into it.
    try:
        bundle = EvidenceBundle.from_json(proof["entry"])
        verify_bundle(bundle, keys)
    except (InvalidInput, KernelVerificationError) as exc:
        subject = getattr(exc, "subject", None) or "member proof"
        raise VerificationError(
            f"the dataset.recorded entry does not verify: {exc}", subject=subject, document=proof
        ) from exc
    _check_member(parts, [item.entry for item in bundle.entries], proof)


def member_proof(
    document: Any, bundle: VerifiedBundle, *, dataset: str, version: str, record_id: str
) -> MemberProof:
    """The proof the client asked for, checked against its already verified entry bundle."""
    parts = _proof_parts(document)
    _check_member(parts, bundle.entries, document)
    asked = (dataset, version, record_id)
    got = (parts.dataset, parts.version, parts.leaf["record"])
    if got != asked:
        raise VerificationError(
            f"asked to prove {record_id!r} in {dataset}@{version}, got a proof of "
            f"{got[2]!r} in {got[0]}@{got[1]}",
            subject="member proof",
            document=document,
        )
    return MemberProof(
        dataset=dataset,
        version=version,
        leaf=dict(parts.leaf),
        index=parts.index,
        records=parts.records,
        hashes=tuple(document["hashes"]),
        entry=bundle,
        document=document,
    )
