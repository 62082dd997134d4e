"""Copy the log kernel into the client: `python client/generate_kernel.py [--check]`.

The client is its own distribution and never imports `ledger`, yet it must
verify exactly as the ledger does. So `consent_ledger_client/_kernel/` mirrors
the few `ledger` modules that verification needs (canonical bytes, RFC 9162
proofs, signed notes, evidence bundles, and the errors they raise), copied by
this script with one rewrite: imports of `ledger.…` become imports of
`consent_ledger_client._kernel.…`. A plain prefix keeps the copies' imports in
the order ruff sorts them. Run it from the repository root after changing one
of those modules; `--check` changes nothing and exits 1 naming the stale
copies (tests/test_client_kernel_copy.py runs it on every test run).
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "ledger"
TARGET = ROOT / "client" / "consent_ledger_client" / "_kernel"
PACKAGE = "consent_ledger_client._kernel"

# Paths under ledger/, mirrored under _kernel/.
KERNEL = (
    "__init__.py",
    "errors.py",
    "tlog/__init__.py",
    "tlog/canonical.py",
    "tlog/merkle.py",
    "tlog/notes.py",
    "tlog/evidence.py",
)
COPIED_MODULES = frozenset(
    "ledger" + ("." + path.removesuffix(".py").replace("/", ".")).removesuffix(".__init__")
    for path in KERNEL
)

LINE_LENGTH = 100  # ruff's, in pyproject.toml
_LEDGER_IMPORT = re.compile(r"^(\s*(?:from|import) )ledger\b", re.MULTILINE)
_SINGLE_LINE_FROM = re.compile(r"^(\s*)from (\S+) import ([^()#\n]+)$")


class KernelImportError(Exception):
    """A kernel module imports a part of `ledger` that the client does not copy."""


def header(path: str) -> str:
    return f"# Generated from ledger/{path} by `python client/generate_kernel.py`; do not edit.\n"


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _check_imports(path: str, source: str) -> None:
    """Refuse a kernel module that imports something of `ledger` left out of the copy."""
    package = ["ledger", *Path(path).parent.parts]
    for node in ast.walk(ast.parse(source, filename=f"ledger/{path}")):
        imported: list[str] = []
        if isinstance(node, ast.Import):
            imported = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                imported.append(submodule if _is_module(submodule) else module)
        for module in imported:
            if module.split(".")[0] == "ledger" and module not in COPIED_MODULES:
                raise KernelImportError(
                    f"ledger/{path} imports {module}, which the client does not copy"
                )


def _wrap(line: str) -> str:
    """Split a rewritten `from x import a, b` that grew too long, as ruff format would."""
    match = _SINGLE_LINE_FROM.match(line)
    if len(line) <= LINE_LENGTH or match is None:
        return line
    indent, module, names = match.groups()
    body = "".join(f"{indent}    {name.strip()},\n" for name in names.split(","))
    return f"{indent}from {module} import (\n{body}{indent})"


def generate(path: str) -> str:
    """The client's copy of ledger/`path`."""
    source = (SOURCE / path).read_text(encoding="utf-8")
    _check_imports(path, source)
    rewritten = _LEDGER_IMPORT.sub(rf"\g<1>{PACKAGE}", source)
    lines = [_wrap(line) for line in rewritten.split("\n")]
    return header(path) + "\n".join(lines)


def expected_copies(target: Path = TARGET) -> dict[Path, str]:
    return {target / path: generate(path) for path in KERNEL}


def stale_files(target: Path = TARGET) -> list[Path]:
    """The copies that are missing or differ from what `generate` makes, and strays."""
    expected = expected_copies(target)
    stale = [
        path
        for path, text in expected.items()
        if not path.is_file() or path.read_text(encoding="utf-8") != text
    ]
    present = set(target.rglob("*.py")) if target.is_dir() else set()
    return stale + sorted(present - set(expected))


def write(target: Path = TARGET) -> list[Path]:
    """Bring the copies up to date; return the files written or removed."""
    changed = stale_files(target)
    expected = expected_copies(target)
    for path in changed:
        if path in expected:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(expected[path], encoding="utf-8")
        else:
            path.unlink()
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a copy is stale"
    )
    arguments = parser.parse_args(argv)
    try:
        changed = stale_files() if arguments.check else write()
    except KernelImportError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    names = [str(path.relative_to(ROOT)) for path in changed]
    if arguments.check and names:
        sys.stderr.write(
            "stale copies of the log kernel (run `python client/generate_kernel.py`): "
            + ", ".join(names)
            + "\n"
        )
        return 1
    for name in names:
        sys.stdout.write(f"updated {name}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
