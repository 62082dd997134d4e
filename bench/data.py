"""The benchmark population is the product's demo population (`ledger.demo`)."""

from ledger.demo import cached_csv, generate_rows, write_csv, write_jsonl

__all__ = ["cached_csv", "generate_rows", "write_csv", "write_jsonl"]
