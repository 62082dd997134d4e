"""The period report: every change in a time window, with figures a DPO or regulator asks for.

The window is the entries whose log time lies in [from, to). Entry times are
taken under the write lock and shared by every entry of one append, and every
append ends in a signed checkpoint, so the window is exactly the entries
between two checkpoints: [first checkpoint size, last checkpoint size).

Evidence, all checkable offline with the ledger's verifier key:

- the signed first and last checkpoints, the RFC 9162 consistency proof
  between them, and the first checkpoint's frontier (the hashes of the
  perfect subtrees left of the window). From the frontier and the window's
  entries, a verifier rebuilds the last checkpoint's root: this proves the
  entries are exactly the log's entries in the window, none added, dropped,
  reordered or changed; each checkpoint published in the window is checked
  the same way;
- the entries just before and just after the window, with inclusion proofs
  against the latest checkpoint (and a consistency proof from the last
  checkpoint to it), whose times show the window is complete at both ends;
- the policy in force when the window opened, proven the same way.

Every count is recomputed from the entries by verify-report, and so is part of
the datasets section: builds, purges and retirements from their entries, the
obligations fulfilled and the time from cause to purge from `fulfilments`, each
row checked against the purge or retirement that closed it. The obligations
opened, cancelled, and open or overdue at the end rest on the ledger's
obligations table (dataset members live outside the log): the report's
signature attests them (see `ledger.reports.figures`). The regime of a
decision by a subject registered before the window rests on the jurisdiction
listed in `prior_jurisdictions` (the ledger's projection at the window's
start, which the full `verify` checks); the eligibility shares can only be
recomputed from the report when the window starts at the log's first entry.

Large windows stay fast: entries are read in chunks as raw canonical bytes
(no ORM objects), parsed once, and written back into the report verbatim.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import orjson

from ledger.errors import InvalidInput, LedgerError
from ledger.gcpause import no_gc
from ledger.reports.envelope import REPORT_FORMAT, sign_report
from ledger.reports.figures import (
    ObligationFact,
    PeriodFigures,
    PolicyTimeline,
    datasets_section,
)
from ledger.service import ConsentLedger, LogSnapshot
from ledger.settings import Settings
from ledger.timestamps import format_timestamp, normalize_timestamp, utc_now
from ledger.tlog.notes import b64

LIMITS = (
    "The window's entries are proven complete and unchanged against the first and last "
    "checkpoints; `boundary` proves the entries on either side lie outside the window.",
    "Regimes of subjects registered before the window rest on `prior_jurisdictions`, and the "
    "eligibility shares on the whole log up to the window's end; verify-report recomputes the "
    "shares only for windows that start at the log's first entry. The full `verify` result "
    "covers the rest.",
    "Decisions over time are bucketed by the time each decision took effect; the window "
    "selects decisions by the time the log recorded them.",
    "Datasets: builds recorded, purges (records, obligations fulfilled, voluntary removals) "
    "and retirements recompute from the window's entries; obligations fulfilled and the time "
    "from cause to purge (whole seconds, nearest-rank median and p95, max) recompute from "
    "`datasets.fulfilments`, each checked against the entry that fulfilled it, and those of "
    "a purge must add up to its `fulfils`. Obligations opened, cancelled, and open or overdue "
    "at `datasets.at`, and how many a retirement fulfilled, come from the ledger's "
    "obligations table (members live outside the log): they are attested by this report's "
    "signature, not recomputable from it.",
)
# Obligations read per call while a report gathers them (the most a listing gives).
OBLIGATION_PAGE = 10_000


def parse_bound(text: str | None, *, field: str) -> str | None:
    """An RFC 3339 time, or a date (midnight UTC), in the log's timestamp form."""
    if text is None:
        return None
    if len(text) == 10 and text[4] == "-" and text[7] == "-":
        text += "T00:00:00Z"
    return normalize_timestamp(text, field=field)


def period_report(
    ledger: ConsentLedger,
    *,
    start: str | None = None,
    end: str | None = None,
    run_verify: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Any], list[bytes]]:
    """The signed period report for entries recorded in [start, end).

    Returns the document with `report.entries` as `orjson.Fragment`s (the raw
    canonical bytes, written verbatim by `orjson.dumps`) and those bytes.
    """
    now = format_timestamp(utc_now())
    start = parse_bound(start, field="from")
    end = parse_bound(end, field="to")
    if start is not None and end is not None and end <= start:
        raise InvalidInput(f"must be later than --from ({start})", field="to")
    signer = ledger.signing_key()
    # The full verify reads the whole log; it runs in a child process, beside
    # the window's scan, so a report costs about the longer of the two.
    child = _start_verify(ledger) if run_verify else None
    with no_gc(), ledger.snapshot() as snapshot:
        origin = snapshot.origin()
        latest = snapshot.latest_checkpoint()
        size = latest.tree_size
        first = 0 if start is None else snapshot.first_at_or_after(start, size)
        last = size if end is None else snapshot.first_at_or_after(end, size)
        if last == 0:
            raise InvalidInput("the log has no entries before this time", field="to")
        first = min(first, last)
        first_note = snapshot.checkpoint_at(first) if first else None
        last_note = snapshot.checkpoint_at(last)
        frontier = snapshot.frontier(first)
        consistency = snapshot.consistency_proof(first, last) if first else []
        published = [
            {"size": tree_size, "root": b64(root)}
            for tree_size, root in snapshot.checkpoints_between(first, last)
        ]
        policies = PolicyTimeline()
        for entry in snapshot.policy_entries(before=first):
            policies.add(entry.seq, entry.data)
        boundary = _boundary(snapshot, first, last, size, latest.note)
        prior, prior_decisions = snapshot.projection_before(first)
        figures = PeriodFigures(policies, prior, prior_decisions)
        entries: list[bytes] = []
        for seq, canonical in snapshot.stream_entries(first, last, progress):
            figures.feed(seq, orjson.loads(canonical))
            entries.append(canonical)
        at = now if end is None else min(end, now)
        counts, timeline = figures.counts(), figures.timeline()
        eligibility = figures.eligibility(at, last)
    try:
        # Read after the window's entries, so that every fulfilment of the window is seen.
        datasets = datasets_section(
            figures.datasets,
            _obligations(ledger, last),
            start=start,
            first_seq=first,
            end_seq=last,
            at=at,
        )
    except BaseException:
        if child is not None:
            child.kill()
            child.communicate()
        raise
    verified = _finish_verify(child) if child is not None else None
    content: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "kind": "period",
        "origin": origin,
        "generated_at": now,
        "verifier_key": str(signer.verifier_key),
        "window": {
            "from": start,
            "to": end,
            "first_seq": first,
            "end_seq": last,
            "entries": last - first,
            "first_time": figures.first_time,
            "last_time": figures.last_time,
        },
        "counts": counts,
        "timeline": timeline,
        "policies": {
            "in_force_at_start": _in_force(policies, first),
            "published": figures.published,
        },
        "eligibility": eligibility,
        "datasets": datasets,
        "checkpoints": {
            "first": first_note,
            "last": last_note,
            "frontier": [b64(node) for node in frontier],
            "consistency_proof": [b64(node) for node in consistency],
            "published": published,
        },
        "boundary": boundary,
        "prior_jurisdictions": {
            ref: prior[ref][0] for ref in sorted(figures.prior_used) if ref in prior
        },
        "verify": verified,
        "limits": list(LIMITS),
        "entries": [],
    }
    document = sign_report(content, signer, entries)
    content["entries"] = RawEntries(entries)
    return document, entries


class RawEntries(list[orjson.Fragment]):
    """Entries written verbatim by orjson (as Fragments), with their raw bytes at hand."""

    def __init__(self, raw: list[bytes]) -> None:
        super().__init__(orjson.Fragment(item) for item in raw)
        self.raw = raw


def entry_bodies(entries: list[Any]) -> list[dict[str, Any]]:
    """Entry bodies from a report's `entries`, as built (`RawEntries`) or as read back."""
    raw = getattr(entries, "raw", None)
    if raw is not None:
        return [orjson.loads(item) for item in raw]
    return entries


def full_verify(url: str) -> dict[str, Any]:
    """The full `verify` of the ledger in the database at `url`, as JSON."""
    ledger = ConsentLedger(Settings(database_url=url))
    try:
        return ledger.verify().to_json()
    except LedgerError as exc:
        return {"ok": False, "error": str(exc)}
    finally:
        ledger.close()


def _start_verify(ledger: ConsentLedger) -> subprocess.Popen[bytes]:
    # A fresh interpreter (not fork: the parent may hold threads and pooled
    # connections); the URL, which may hold a password, goes through stdin.
    child = subprocess.Popen(
        [sys.executable, "-m", "ledger.reports.period"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdin is not None
    child.stdin.write(ledger.database_url(hide_password=False).encode())
    child.stdin.close()
    child.stdin = None
    return child


def _finish_verify(child: subprocess.Popen[bytes]) -> dict[str, Any]:
    out, err = child.communicate()
    if child.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        return {
            "ok": False,
            "error": f"verify did not run: {lines[-1] if lines else child.returncode}",
        }
    result: dict[str, Any] = orjson.loads(out)
    return result


def _obligations(ledger: ConsentLedger, end_seq: int) -> list[ObligationFact]:
    """Every obligation of the builds recorded before `end_seq`, as the ledger lists them now.

    Later fulfilments and cancellations are undone by `datasets_section` (by closing seq
    and time); builds recorded after the window have no part in it. May raise
    CatchingUp while a policy's re-evaluation is under way: a report does not sign
    figures it knows to be partial.
    """
    builds = {
        (build["dataset"], build["version"]): build["time"]
        for build in ledger.dataset_builds()
        if build["seq"] < end_seq
    }
    facts: list[ObligationFact] = []
    for dataset in sorted({name for name, _ in builds}):
        after: int | None = None
        while True:
            page = ledger.obligations(dataset, after=after, limit=OBLIGATION_PAGE)
            for item in page["obligations"]:
                build_time = builds.get((dataset, item["version"]))
                if build_time is None:
                    continue
                facts.append(
                    ObligationFact(
                        dataset=dataset,
                        version=item["version"],
                        build_time=build_time,
                        cause=item["cause"],
                        cause_time=item["cause_time"],
                        due=item["due"],
                        # `overdue` is an open obligation's state now, not at the window's end.
                        status="open" if item["status"] == "overdue" else item["status"],
                        closed_by=item["closed_by"],
                        closed_time=item["closed_time"],
                    )
                )
            after = page["next"]
            if after is None:
                break
    return facts


def _in_force(policies: PolicyTimeline, first: int) -> dict[str, Any] | None:
    found = None
    for seq, version, _ in policies.published:
        if seq < first:
            found = {"version": version, "seq": seq}
    return found


def _boundary(snapshot: LogSnapshot, first: int, last: int, size: int, note: str) -> dict[str, Any]:
    wanted = []
    if first > 0:
        wanted.append(first - 1)
        in_force = snapshot.policy_entries(before=first)
        if in_force and in_force[-1].seq != first - 1:
            wanted.append(in_force[-1].seq)
    if last < size:
        wanted.append(last)
    bundle = snapshot.bundle([snapshot.read_entry(seq) for seq in sorted(wanted)], size, note)
    proof = snapshot.consistency_proof(last, size) if last < size else []
    return {
        "evidence": bundle.to_json(),
        "consistency_proof": [b64(node) for node in proof],
    }


def _main() -> None:
    sys.stdout.buffer.write(orjson.dumps(full_verify(sys.stdin.read().strip())))


if __name__ == "__main__":
    _main()
