"""verify-report: check a report offline with nothing but the ledger's verifier key(s).

1. The signed note verifies under a trusted key and names this report's origin
   and kind; 2. the SHA-256 of the RFC 8785 bytes of the content is the one it
   signs (for HTML, a second note signs every byte of the page around the
   embedded report); 3. every proof inside verifies: evidence bundles
   (`verify_bundle`), checkpoints, consistency proofs, and for a period report
   the Merkle root rebuilt from the window's entries; 4. every figure is
   recomputed from the entries the report carries and must equal what the
   report states. The first failure raises `VerificationError` naming it.

One kind of figure cannot be recomputed: the purge obligations of a period
report that rest on dataset members, which live outside the log (opened,
cancelled, open and overdue at the end). Those are checked for consistency
with the entries where they touch them, and the result says they are attested
by the ledger's signature (see `ledger.reports.figures`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ledger.consent.entries import SUBJECT_KINDS, EntryKind
from ledger.consent.subjects import commitment
from ledger.errors import InvalidInput, VerificationError
from ledger.gcpause import no_gc
from ledger.reports.envelope import LoadedReport, check_rendering, check_signature
from ledger.reports.figures import (
    PeriodFigures,
    PolicyTimeline,
    check_fulfilments,
    datasets_at,
    quiet_dataset_figures,
    recomputed_dataset_figures,
)
from ledger.reports.subject import build_subject_content
from ledger.tlog import merkle
from ledger.tlog.canonical import canonical_bytes
from ledger.tlog.evidence import EvidenceBundle, verify_bundle
from ledger.tlog.notes import Checkpoint, VerifierKey, b64, open_checkpoint, unb64


@dataclass
class ReportVerification:
    kind: str
    origin: str
    sha256: str
    signed_by: tuple[str, ...]
    checks: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "kind": self.kind,
            "origin": self.origin,
            "sha256": self.sha256,
            "signed_by": list(self.signed_by),
            "checks": self.checks,
        }


def verify_report(loaded: LoadedReport, keys: Sequence[VerifierKey]) -> ReportVerification:
    """Check a loaded report; raise VerificationError naming the first thing that fails."""
    with no_gc():
        return _verify(loaded, keys)


def _verify(loaded: LoadedReport, keys: Sequence[VerifierKey]) -> ReportVerification:
    if not keys:
        raise InvalidInput("at least one trusted verifier key is needed", field="key")
    document = loaded.document
    content = document.get("report")
    if not isinstance(content, dict):
        raise VerificationError("missing or not an object", subject="report")
    canonicals: list[bytes] | None = None
    if content.get("kind") == "period":
        canonicals = _canonical_entries(content.get("entries"))
    signature = check_signature(document, keys, canonicals)
    result = ReportVerification(
        kind=signature.kind,
        origin=signature.origin,
        sha256=signature.digest,
        signed_by=signature.signed_by,
    )
    result.checks.append(
        f"signature by {', '.join(signature.signed_by)} over content SHA-256 {signature.digest}"
    )
    if loaded.page is not None:
        check_rendering(loaded, signature, keys)
        result.checks.append("HTML page signed byte for byte around the embedded report")
    try:
        if signature.kind == "subject":
            _verify_subject(content, keys, result)
        else:
            assert canonicals is not None
            _verify_period(content, canonicals, keys, result)
    except (KeyError, TypeError, ValueError, InvalidInput) as exc:
        raise VerificationError(f"malformed report content: {exc!r}", subject="report") from exc
    return result


# --- helpers -----------------------------------------------------------------------------


def first_difference(stated: Any, derived: Any, path: str) -> str | None:
    """The path of the first place where two JSON values differ, or None."""
    if isinstance(stated, dict) and isinstance(derived, dict):
        for key in sorted(set(stated) | set(derived)):
            if key not in stated or key not in derived:
                return f"{path}.{key}"
            found = first_difference(stated[key], derived[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(stated, list) and isinstance(derived, list):
        for index, (left, right) in enumerate(zip(stated, derived, strict=False)):
            found = first_difference(left, right, f"{path}[{index}]")
            if found:
                return found
        if len(stated) != len(derived):
            return f"{path}[{min(len(stated), len(derived))}]"
        return None
    if type(stated) is not type(derived) or stated != derived:
        return path
    return None


def _require_same(stated: Any, derived: Any, path: str, what: str) -> None:
    where = first_difference(stated, derived, path)
    if where is not None:
        raise VerificationError(
            f"{where} does not match what the report's evidence gives ({what})", subject="report"
        )


def _open(note: Any, keys: Sequence[VerifierKey], origin: str, where: str) -> Checkpoint:
    if not isinstance(note, str):
        raise VerificationError("missing signed checkpoint", subject=where)
    try:
        return open_checkpoint(note, keys, origin=origin)
    except VerificationError as exc:
        raise VerificationError(str(exc), subject=where) from exc


def _bundle(
    raw: Any, keys: Sequence[VerifierKey], origin: str, where: str
) -> tuple[EvidenceBundle, Checkpoint]:
    try:
        bundle = EvidenceBundle.from_json(raw)
    except InvalidInput as exc:
        raise VerificationError(f"malformed evidence bundle: {exc}", subject=where) from exc
    try:
        checkpoint = verify_bundle(bundle, keys)
    except VerificationError as exc:
        raise VerificationError(str(exc), subject=where) from exc
    if checkpoint.origin != origin:
        raise VerificationError(
            f"proves entries of log {checkpoint.origin!r}, not {origin!r}", subject=where
        )
    return bundle, checkpoint


def _hashes(raw: Any, where: str) -> list[bytes]:
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise VerificationError("not a list of base64 hashes", subject=where)
    try:
        return [unb64(item, field=where) for item in raw]
    except InvalidInput as exc:
        raise VerificationError(str(exc), subject=where) from exc


def _canonical_entries(raw: Any) -> list[bytes]:
    if not isinstance(raw, list):
        raise VerificationError("`entries` is missing or not a list", subject="report")
    canonicals = []
    for position, body in enumerate(raw):
        if not isinstance(body, dict):
            raise VerificationError("not a JSON object", subject=f"report.entries[{position}]")
        try:
            canonicals.append(canonical_bytes(body))
        except InvalidInput as exc:
            raise VerificationError(
                f"not a canonical log entry: {exc}", subject=f"report.entries[{position}]"
            ) from exc
    return canonicals


# --- subject reports ---------------------------------------------------------------------


def _verify_subject(
    content: dict[str, Any], keys: Sequence[VerifierKey], result: ReportVerification
) -> None:
    origin = content["origin"]
    bundle, checkpoint = _bundle(content["evidence"], keys, origin, "report.evidence")
    result.checks.append(
        f"evidence bundle: {len(bundle.entries)} entries proven against checkpoint "
        f"{checkpoint.size}"
    )
    as_of = content["as_of"]
    if as_of["tree_size"] != checkpoint.size:
        raise VerificationError(
            f"says tree size {as_of['tree_size']}, the evidence proves against {checkpoint.size}",
            subject="report.as_of",
        )
    subject = content["subject"]
    ref, subject_id = subject["ref"], subject["id"]
    own: list[dict[str, Any]] = []
    policies: list[dict[str, Any]] = []
    for item in bundle.entries:
        body = item.entry
        data = body.get("data", {})
        if body.get("kind") == EntryKind.POLICY_PUBLISHED:
            policies.append(body)
        elif body.get("kind") in SUBJECT_KINDS and data.get("subject") == ref:
            own.append(body)
        else:
            raise VerificationError(
                f"entry {item.index} is neither about subject {ref} nor a policy",
                subject="report.evidence",
            )
    registered = [body for body in own if body["kind"] == EntryKind.SUBJECT_REGISTERED]
    if len(registered) != 1:
        raise VerificationError(
            f"holds {len(registered)} subject.registered entries for {ref}, not one",
            subject="report.evidence",
        )
    salt = unb64(subject["salt"], field="report.subject.salt")
    if commitment(salt, subject_id) != registered[0]["data"]["commitment"]:
        raise VerificationError(
            f"subject id {subject_id!r} and salt do not open the commitment in entry "
            f"{registered[0]['seq']}: these entries are not this person's",
            subject="report.subject",
        )
    result.checks.append(
        f"subject {subject_id!r} opens the commitment of {ref} (entry {registered[0]['seq']})"
    )
    derived = build_subject_content(
        origin=origin,
        subject_id=subject_id,
        salt=salt,
        ref=ref,
        own=own,
        policies=policies,
        tree_size=checkpoint.size,
        at=as_of["at"],
        generated_at=content["generated_at"],
        verifier_key=content["verifier_key"],
    )
    stated = {key: value for key, value in content.items() if key != "evidence"}
    _require_same(stated, derived, "report", "decisions, 27560 records and eligibility")
    result.checks.append(
        f"{len(content['decisions'])} decisions and their ISO/IEC TS 27560 records match "
        "their entries; the eligibility of "
        f"{len(content['eligibility'])} category × purpose pairs recomputes at tree size "
        f"{checkpoint.size}, {as_of['at']}"
    )


# --- period reports ----------------------------------------------------------------------


def _verify_period(
    content: dict[str, Any],
    canonicals: list[bytes],
    keys: Sequence[VerifierKey],
    result: ReportVerification,
) -> None:
    origin = content["origin"]
    window = content["window"]
    first, last = window["first_seq"], window["end_seq"]
    entries: list[dict[str, Any]] = content["entries"]
    if not 0 <= first <= last or len(entries) != last - first or window["entries"] != last - first:
        raise VerificationError(
            f"holds {len(entries)} entries for the window {first}..{last}",
            subject="report.window",
        )
    checkpoints = content["checkpoints"]
    last_cp = _open(checkpoints["last"], keys, origin, "report.checkpoints.last")
    if last_cp.size != last:
        raise VerificationError(
            f"is for tree size {last_cp.size}, the window ends at {last}",
            subject="report.checkpoints.last",
        )
    frontier = _hashes(checkpoints["frontier"], "report.checkpoints.frontier")
    if first:
        first_cp = _open(checkpoints["first"], keys, origin, "report.checkpoints.first")
        if first_cp.size != first:
            raise VerificationError(
                f"is for tree size {first_cp.size}, the window starts at {first}",
                subject="report.checkpoints.first",
            )
        first_root = first_cp.root
    else:
        if checkpoints["first"] is not None:
            raise VerificationError(
                "a window from entry 0 has no first checkpoint", subject="report.checkpoints.first"
            )
        first_root = merkle.EMPTY_ROOT
    if len(frontier) != first.bit_count() or merkle.fold_root(frontier) != first_root:
        raise VerificationError(
            "the frontier does not hash to the first checkpoint's root",
            subject="report.checkpoints.frontier",
        )
    try:
        merkle.verify_consistency(
            first,
            last,
            first_root,
            last_cp.root,
            _hashes(checkpoints["consistency_proof"], "report.checkpoints.consistency_proof"),
        )
    except VerificationError as exc:
        raise VerificationError(str(exc), subject="report.checkpoints.consistency_proof") from exc
    result.checks.append(f"checkpoints {first} and {last} signed; consistency proof verifies")

    # The window's entries rebuild the last checkpoint's root from the first's frontier.
    published = checkpoints["published"]
    tree = merkle.TreeBuilder(first, frontier)
    pending = iter(published)
    wanted = next(pending, None)
    start, end = window["from"], window["to"]
    for position, (body, canonical) in enumerate(zip(entries, canonicals, strict=True)):
        seq = first + position
        if body.get("seq") != seq:
            raise VerificationError(
                f"carries seq {body.get('seq')!r}, expected {seq}", subject=f"entry {seq}"
            )
        time = body.get("time")
        if (
            not isinstance(time, str)
            or (start is not None and time < start)
            or (end is not None and time >= end)
        ):
            raise VerificationError(
                f"time {time!r} is outside the window [{start}, {end})", subject=f"entry {seq}"
            )
        tree.append(merkle.leaf_hash(canonical))
        if wanted is not None and wanted["size"] == tree.size:
            if b64(tree.root()) != wanted["root"]:
                raise VerificationError(
                    f"the entries give a different root at tree size {tree.size}: an entry in "
                    "the window was changed",
                    subject="report.checkpoints.published",
                )
            wanted = next(pending, None)
    if wanted is not None or tree.size != last:
        raise VerificationError(
            "lists a checkpoint the window's entries do not reach",
            subject="report.checkpoints.published",
        )
    if tree.root() != last_cp.root:
        raise VerificationError(
            "the window's entries do not hash to the last checkpoint's root: entries were "
            "added, dropped, reordered or changed",
            subject="report.entries",
        )
    result.checks.append(
        f"{len(entries)} entries rebuild the signed root at {last}; "
        f"{len(published)} checkpoints in the window match"
    )

    policies = PolicyTimeline()
    _verify_boundary(content, last_cp, keys, policies, result)

    prior = {
        ref: (jurisdiction, False) for ref, jurisdiction in content["prior_jurisdictions"].items()
    }
    figures = PeriodFigures(policies, prior)
    for position, body in enumerate(entries):
        figures.feed(first + position, body)
    _require_same(content["counts"], figures.counts(), "report.counts", "counts")
    _require_same(content["timeline"], figures.timeline(), "report.timeline", "timeline")
    _require_same(
        content["policies"]["published"],
        figures.published,
        "report.policies.published",
        "policy changes",
    )
    _require_same(
        [window["first_time"], window["last_time"]],
        [figures.first_time, figures.last_time],
        "report.window",
        "first and last entry times",
    )
    if set(content["prior_jurisdictions"]) != figures.prior_used:
        raise VerificationError(
            "lists different subjects than those registered before the window with decisions in it",
            subject="report.prior_jurisdictions",
        )
    result.checks.append(
        "counts by kind, decision, category, purpose, method and regime, the timeline and the "
        "policy changes recompute from the entries"
        + (f" ({len(prior)} regimes rest on prior_jurisdictions)" if prior else "")
    )
    _verify_datasets(content, entries, figures, result)
    stated = content["eligibility"]
    if first == 0 and stated is not None:
        derived = figures.eligibility(stated["at"], last)
        _require_same(stated, derived, "report.eligibility", "eligibility shares")
        result.checks.append("eligibility shares recompute from the whole log")
    elif stated is not None:
        result.checks.append(
            "eligibility shares: not recomputable from a window that starts after entry 0 "
            "(signed by the ledger)"
        )
    verified = content["verify"]
    if verified is None:
        result.checks.append("the report was made without a full verify")
    elif verified.get("ok"):
        result.checks.append(
            f"the ledger's full verify passed at generation: {verified['entries']} entries, "
            f"{verified['checkpoints']} checkpoints"
        )
    else:
        result.checks.append(f"the ledger's full verify FAILED at generation: {verified['error']}")


def _verify_datasets(
    content: dict[str, Any],
    entries: list[dict[str, Any]],
    figures: PeriodFigures,
    result: ReportVerification,
) -> None:
    """The datasets section: what follows from the entries is recomputed, the rest named as
    attested (see `ledger.reports.figures`)."""
    window = content["window"]
    activity = figures.datasets.activity
    section = content.get("datasets")
    if section is None:
        # A report made before datasets existed: fine, unless its entries record some.
        if activity:
            raise VerificationError(
                f"is missing, but the window holds entries of datasets {', '.join(activity)}",
                subject="report.datasets",
            )
        result.checks.append("no datasets section (the report predates datasets)")
        return
    _require_same(
        section["at"],
        datasets_at(window, content["generated_at"]),
        "report.datasets.at",
        "the window's end, or the report's time if earlier",
    )
    # 1. Each fulfilment row names a purge or retirement of the window; a purge's rows add
    #    up to its `fulfils`.
    problem = check_fulfilments(
        section["fulfilments"], figures.datasets.closings, entries, window["first_seq"]
    )
    if problem is not None:
        raise VerificationError(problem, subject="report")
    # 2. Every figure that follows from the entries and those rows is recomputed.
    stated: dict[str, Any] = section["by_dataset"]
    derived = recomputed_dataset_figures(figures.datasets, section["fulfilments"])
    missing = sorted(derived.keys() - stated.keys())
    if missing:
        raise VerificationError(
            f"does not list dataset {missing[0]!r}, which has entries or fulfilments in the window",
            subject="report.datasets.by_dataset",
        )
    for name in sorted(stated):
        figures_of = derived.get(name) or quiet_dataset_figures()
        where = f"report.datasets.by_dataset.{name}"
        stated_of = stated[name]
        for key in ("recorded", "purged", "retired"):
            _require_same(stated_of[key], figures_of[key], f"{where}.{key}", "dataset entries")
        _require_same(
            stated_of["obligations"]["fulfilled"],
            figures_of["fulfilled"],
            f"{where}.obligations.fulfilled",
            "fulfilments checked against their purge entries",
        )
        _require_same(
            stated_of["cause_to_purge_seconds"],
            figures_of["cause_to_purge_seconds"],
            f"{where}.cause_to_purge_seconds",
            "fulfilments checked against their purge entries",
        )
    if not stated:
        result.checks.append("datasets: no dataset builds, purges or obligations in the window")
        return
    fulfilled = sum(row["count"] for row in section["fulfilments"])
    result.checks.append(
        f"datasets ({len(stated)}): builds recorded, purges and retirements recompute from "
        f"their entries; {fulfilled} obligations fulfilled and the time from cause to purge "
        "recompute from the fulfilments, each checked against the entry that closed it"
    )
    result.checks.append(
        f"datasets: obligations opened, cancelled, open and overdue at {section['at']} (and "
        "those a retirement fulfilled) are attested by the ledger's signature, not "
        "recomputable: dataset members live outside the log"
    )


def _verify_boundary(
    content: dict[str, Any],
    last_cp: Checkpoint,
    keys: Sequence[VerifierKey],
    policies: PolicyTimeline,
    result: ReportVerification,
) -> None:
    origin = content["origin"]
    window = content["window"]
    first, last = window["first_seq"], window["end_seq"]
    start, end = window["from"], window["to"]
    boundary = content["boundary"]
    bundle, latest = _bundle(boundary["evidence"], keys, origin, "report.boundary")
    if latest.size < last:
        raise VerificationError(
            f"proves against tree size {latest.size}, before the window's end {last}",
            subject="report.boundary",
        )
    try:
        merkle.verify_consistency(
            last,
            latest.size,
            last_cp.root,
            latest.root,
            _hashes(boundary["consistency_proof"], "report.boundary.consistency_proof"),
        )
    except VerificationError as exc:
        raise VerificationError(str(exc), subject="report.boundary.consistency_proof") from exc
    shown: Mapping[int, dict[str, Any]] = {item.index: item.entry for item in bundle.entries}
    if first > 0:
        before = shown.get(first - 1)
        if start is None or before is None or before["time"] >= start:
            raise VerificationError(
                f"does not prove that entry {first - 1} lies before the window",
                subject="report.boundary",
            )
    elif start is not None and 0 in shown:
        raise VerificationError(
            "a window from entry 0 has no entry before it", subject="report.boundary"
        )
    if last < latest.size:
        after = shown.get(last)
        if end is None or after is None or after["time"] < end:
            raise VerificationError(
                f"does not prove that entry {last} lies after the window",
                subject="report.boundary",
            )
    stated = content["policies"]["in_force_at_start"]
    earlier = [
        (seq, body)
        for seq, body in sorted(shown.items())
        if seq < first and body["kind"] == EntryKind.POLICY_PUBLISHED
    ]
    if earlier:
        seq, body = earlier[-1]
        policies.add(seq, body["data"])
        derived: dict[str, Any] | None = {"version": body["data"]["version"], "seq": seq}
    else:
        derived = None
    if first > 0 and derived is None:
        raise VerificationError(
            "does not prove the policy in force when the window opened",
            subject="report.boundary",
        )
    _require_same(stated, derived, "report.policies.in_force_at_start", "policy at start")
    result.checks.append(
        f"window complete: boundary entries proven against checkpoint {latest.size}"
    )
