"""A bulk import run as its own process by tests/test_import.py (to be SIGKILLed).

    python tests/procs/bulk_import.py HOME DATABASE_URL FILE [--batch-size N]

It opens the ledger with its own engine, loads the signing key, prints
``{"ready": true}`` and then runs `ConsentLedger.import_file` on FILE. If it
is not killed first it prints the import summary as one JSON line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ledger.service import ConsentLedger
from ledger.settings import Settings


def _emit(record: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("home", type=Path)
    parser.add_argument("database_url")
    parser.add_argument("file", type=Path)
    parser.add_argument("--batch-size", type=int, default=200)
    args = parser.parse_args(argv)

    ledger = ConsentLedger(Settings(home=args.home, database_url=args.database_url))
    try:
        ledger.signing_key()  # load and check the key before saying ready
        _emit({"ready": True})
        summary = ledger.import_file(args.file, actor="bulk-import", batch_size=args.batch_size)
        _emit({"done": True, **summary.to_json()})
    finally:
        ledger.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
