"""End-to-end tests: `consent-ledger serve` in a subprocess, driven over real HTTP."""
