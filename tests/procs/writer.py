"""A ledger writer run as its own process by tests/test_concurrency.py.

    python tests/procs/writer.py HOME DATABASE_URL WORKER COUNT [--mode M] [--subject S]

It opens the ledger with its own engine, prints ``{"ready": true}``, waits for
one line on stdin (so that every worker starts at the same moment), then
performs COUNT writes. After each write returns it prints one JSON line, and
flushes it, saying what it was told: the tree size, a hash of the checkpoint
note and every appended entry's seq and canonical bytes. A line is printed only
after the write committed, so each line is an acknowledged write.

Modes:
  mixed  register_subject and record_consents on shared and own subjects, with
         reads (check, receipt + offline verification) in between
  loop   appends as fast as it can (for SIGKILL tests); COUNT may be huge
  same   record_consents for one --subject, with tied and past `effective`
         values and expired decisions
  one    a warm-up write before the ready line (everything lazy loaded, files and
         connections made), then {"calling": true} and one register_subject of --subject

The step functions are importable so that a thread test runs the same writes.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from ledger.consent.decisions import DecisionRequest
from ledger.service import ConsentLedger
from ledger.settings import Settings
from ledger.tlog.evidence import verify_bundle
from ledger.tlog.log import SealedAppend
from ledger.tlog.notes import VerifierKey

SHARED = ("shared-0", "shared-1")
JURISDICTIONS = ("US", "DE", None, "GB")
DECISIONS = ("granted", "denied", "withdrawn")
# Past `effective` values shared by every worker, so that ties are common and
# the seq tie-break of §3.4 decides.
PAST = ("2020-01-01T00:00:00.000000Z", "2020-01-01T00:00:01.000000Z", "2020-01-01T00:00:02.000000Z")
EXPIRES = "2020-03-01T00:00:00.000000Z"


def ack(worker: int, i: int, op: str, sealed: SealedAppend | None) -> dict[str, Any]:
    """What an acknowledged write was told, as one JSON-able record."""
    if sealed is None:
        return {"w": worker, "i": i, "op": op, "noop": True}
    return {
        "w": worker,
        "i": i,
        "op": op,
        "tree_size": sealed.tree_size,
        "checkpoint_sha256": hashlib.sha256(sealed.checkpoint.encode()).hexdigest(),
        "entries": [
            [entry.seq, base64.b64encode(entry.canonical).decode()] for entry in sealed.entries
        ],
    }


def mixed_step(ledger: ConsentLedger, worker: int, i: int) -> dict[str, Any]:
    """Write number `i` of `worker`: shared and own subjects, one or several entries."""
    actor = f"worker-{worker}"
    own = f"w{worker}-s{i // 4}"
    shared = SHARED[(worker + i // 4) % 2]
    step = i % 4
    sealed: SealedAppend | None
    if step == 0:
        op = "register-own"
        sealed = ledger.register_subject(
            own, jurisdiction=JURISDICTIONS[(worker + i) % 4], actor=actor
        )
    elif step == 1:
        # Every worker registers or re-registers the shared subjects with
        # changing attributes: registered, updated or (unchanged) nothing.
        op = "register-shared"
        sealed = ledger.register_subject(
            shared, jurisdiction=JURISDICTIONS[(worker + i // 4) % 4], actor=actor
        )
    elif step == 2:
        op = "record-shared"
        sealed = ledger.record_consents(
            shared,
            [DecisionRequest(category="location", decision=DECISIONS[(worker + i) % 3])],
            actor=actor,
        )
    else:
        op = "record-own"
        sealed = ledger.record_consents(
            own,
            [
                DecisionRequest(category="content.public", decision="granted"),
                DecisionRequest(category="biometric", decision="granted", explicit=True),
                DecisionRequest(category="location", decision="denied", purpose="*"),
            ],
            actor=actor,
        )
    if i % 5 == 4:
        # Reads in between: on PostgreSQL they run REPEATABLE READ, and the
        # pooled connection must not carry that into the next write.
        ledger.check(shared, "location")
        if sealed is not None:
            keys = [VerifierKey.parse(ledger.verifier_key())]
            verify_bundle(ledger.receipt(sealed), keys)
    return ack(worker, i, op, sealed)


def loop_step(ledger: ConsentLedger, worker: int, i: int) -> dict[str, Any]:
    """Appends of one, two or four entries, as fast as possible."""
    actor = f"looper-{worker}"
    subject = f"loop{worker}-s{i // 2}"
    if i % 2 == 0:
        sealed = ledger.register_subject(subject, jurisdiction="DE", actor=actor)
        return ack(worker, i, "register", sealed)
    decisions = [
        DecisionRequest(category=category, decision=DECISIONS[(i + n) % 3])
        for n, category in enumerate(
            ("location", "profile", "activity", "content.public")[: i % 4 + 1]
        )
    ]
    return ack(worker, i, "record", ledger.record_consents(subject, decisions, actor=actor))


def same_step(ledger: ConsentLedger, worker: int, i: int, subject: str) -> dict[str, Any]:
    """One decision about `subject`: defaults, ties on past times, expired, wildcard."""
    kind = (worker + i) % 5
    category, purpose = "location", "ai-training"
    effective: str | None = None
    expires: str | None = None
    if kind in (1, 2):
        effective = PAST[(worker * 7 + i) % 3]
    elif kind == 3:
        effective, expires = PAST[i % 3], EXPIRES
    elif kind == 4:
        effective, category, purpose = PAST[(worker + i) % 3], "*", "*"
    request = DecisionRequest(
        category=category,
        purpose=purpose,
        decision=DECISIONS[(worker * 3 + i) % 3],
        effective=effective,
        expires=expires,
    )
    sealed = ledger.record_consents(subject, [request], actor=f"same-{worker}")
    return ack(worker, i, "record", sealed)


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("home", type=Path)
    parser.add_argument("database_url")
    parser.add_argument("worker", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("--mode", choices=("mixed", "loop", "same", "one"), default="mixed")
    parser.add_argument("--subject", default="same-subject")
    args = parser.parse_args(argv)

    ledger = ConsentLedger(Settings(home=args.home, database_url=args.database_url))
    ledger.signing_key()  # load and check the key before the start line
    if args.mode == "one":
        warm = ledger.register_subject(f"{args.subject}-warm-up", actor="warm-up")
        _emit(ack(args.worker, -1, "warm-up", warm))
    _emit({"ready": True, "w": args.worker})
    sys.stdin.readline()
    try:
        for i in range(args.count):
            if args.mode == "mixed":
                record = mixed_step(ledger, args.worker, i)
            elif args.mode == "loop":
                record = loop_step(ledger, args.worker, i)
            elif args.mode == "same":
                record = same_step(ledger, args.worker, i, args.subject)
            else:
                _emit({"calling": True, "w": args.worker})
                sealed = ledger.register_subject(args.subject, actor=f"one-{args.worker}")
                record = ack(args.worker, i, "register", sealed)
            _emit(record)
    finally:
        ledger.close()
    _emit({"done": True, "w": args.worker})
    return 0


if __name__ == "__main__":
    sys.exit(main())
