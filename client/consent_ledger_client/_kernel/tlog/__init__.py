# Generated from ledger/tlog/__init__.py by `python client/generate_kernel.py`; do not edit.
