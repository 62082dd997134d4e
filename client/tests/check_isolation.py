"""Fail unless this interpreter has the client installed and none of the server.

`make test-client` runs it (with `python -I`, so the checkout is not on the
path) in the throwaway virtualenv where it installed only the client and
pytest, before running the client's tests there.
"""

from __future__ import annotations

import importlib.util
import sys
import sysconfig
from pathlib import Path

# The server's own packages, then what it depends on and the client must not.
SERVER_MODULES = [
    "ledger",
    "api",
    "cli",
    "fastapi",
    "sqlalchemy",
    "sqlmodel",
    "psycopg",
    "alembic",
    "uvicorn",
    "typer",
    "matplotlib",
]


def main() -> int:
    importable = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is not None]
    if importable:
        sys.stderr.write(f"the client's virtualenv can import the server's {importable}\n")
        return 1
    spec = importlib.util.find_spec("consent_ledger_client")
    installed = Path(sysconfig.get_paths()["purelib"]).resolve()
    if spec is None or spec.origin is None or installed not in Path(spec.origin).parents:
        where = spec.origin if spec else "nowhere"
        sys.stderr.write(f"consent_ledger_client is not installed in {installed}: {where}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
