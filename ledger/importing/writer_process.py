"""The import's writer process: `python -m ledger.importing.writer_process`, started by
`ledger.importing` for a large import (see `_WriterProcess` there)."""

from __future__ import annotations

import sys

from ledger.importing import serve_writer

if __name__ == "__main__":
    serve_writer(sys.stdin.buffer, sys.stdout.buffer)
