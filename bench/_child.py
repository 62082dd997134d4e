"""Work the harness runs in a child process (so it can be timed out and its RSS read).

`python -m bench._child verify`: verify the ledger named by the CONSENT_LEDGER_*
environment, print {"seconds", "entries", "checkpoints"} as JSON. The time is
taken around `verify_ledger` only, without interpreter start-up.
"""

from __future__ import annotations

import sys
import time

import orjson

from ledger.settings import Settings
from ledger.store.db import make_engine
from ledger.verify import verify_ledger


def verify() -> None:
    engine = make_engine(Settings().resolved_database_url)
    start = time.perf_counter()
    report = verify_ledger(engine)
    seconds = time.perf_counter() - start
    sys.stdout.write(
        orjson.dumps(
            {"seconds": seconds, "entries": report.entries, "checkpoints": report.checkpoints}
        ).decode()
    )


if __name__ == "__main__":
    {"verify": verify}[sys.argv[1]]()
