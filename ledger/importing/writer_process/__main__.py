"""`python -m ledger.importing.writer_process`: the writer process's entry point."""

from __future__ import annotations

import sys

from ledger.importing.writer_process import serve_writer

if __name__ == "__main__":
    serve_writer(sys.stdin.buffer, sys.stdout.buffer)
