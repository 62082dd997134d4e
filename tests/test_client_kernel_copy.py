"""The client's copy of the log kernel (`consent_ledger_client/_kernel`) is what
`client/generate_kernel.py` makes from `ledger/` today, and says where it came from."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "generate_kernel", ROOT / "client" / "generate_kernel.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = _generator()


def test_the_client_kernel_copy_is_up_to_date() -> None:
    stale = [str(path.relative_to(ROOT)) for path in generator.stale_files()]
    assert not stale, f"run `python client/generate_kernel.py`; stale: {stale}"
    assert generator.main(["--check"]) == 0


def test_every_copy_names_its_source_and_imports_no_ledger_module() -> None:
    for path in generator.KERNEL:
        copy = (generator.TARGET / path).read_text(encoding="utf-8")
        assert copy.startswith(f"# Generated from ledger/{path} by "), path
        assert "do not edit" in copy.splitlines()[0]
        code = [line.strip() for line in copy.splitlines()]
        assert not [line for line in code if line.startswith(("from ledger", "import ledger"))]


def test_the_check_reports_edited_missing_and_stray_copies(tmp_path: Path) -> None:
    copy = tmp_path / "_kernel"
    assert {path.relative_to(copy) for path in generator.write(copy)} == {
        Path(path) for path in generator.KERNEL
    }
    assert generator.stale_files(copy) == []

    merkle = copy / "tlog" / "merkle.py"
    merkle.write_text(merkle.read_text().replace("HASH_SIZE = 32", "HASH_SIZE = 31"))
    (copy / "tlog" / "notes.py").unlink()
    (copy / "tlog" / "log.py").write_text("")
    assert generator.stale_files(copy) == [
        merkle,
        copy / "tlog" / "notes.py",
        copy / "tlog" / "log.py",
    ]
    generator.write(copy)
    assert generator.stale_files(copy) == []
    assert not (copy / "tlog" / "log.py").exists()


def test_a_kernel_module_importing_what_the_client_lacks_is_refused() -> None:
    source = "from ledger.tlog import merkle, log\nfrom ledger.errors import NotFound\n"
    with pytest.raises(generator.KernelImportError, match="imports ledger.tlog.log"):
        generator._check_imports("tlog/evidence.py", source)
    generator._check_imports("tlog/evidence.py", "from ledger.tlog import merkle\n")
    with pytest.raises(generator.KernelImportError, match="imports ledger.store.db"):
        generator._check_imports("tlog/notes.py", "from ..store.db import engine\n")
