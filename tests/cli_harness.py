"""Driving the real Typer app in-process, as a user's shell would: shared by the CLI tests.

Settings come from the environment (`CONSENT_LEDGER_HOME`,
`CONSENT_LEDGER_DATABASE_URL`); every helper checks the exit code (0 success,
1 failure, 2 usage error) and shows what the user saw when it is wrong.
"""

from __future__ import annotations

import json
import re
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner, Result

from cli.main import app

OK, FAILURE, USAGE = 0, 1, 2
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")

runner = CliRunner()


def describe(result: Result) -> str:
    """The output as the user saw it, plus any traceback the CLI let escape."""
    described = result.output
    exception = result.exception
    if exception is not None and not isinstance(exception, SystemExit):
        described += "\n" + "".join(traceback.format_exception(exception))
    return described


def invoke(*args: str, code: int = OK) -> Result:
    # Wide enough that Rich's usage-error box never cuts a long temporary path.
    result = runner.invoke(app, list(args), env={"COLUMNS": "400"})
    assert result.exit_code == code, f"`{' '.join(args)}` -> {result.exit_code}\n" + describe(
        result
    )
    return result


def invoke_json(*args: str) -> Any:
    return json.loads(invoke(*args, "--json").stdout)


def tree_size() -> int:
    return int(invoke_json("checkpoint")["tree_size"])


@dataclass
class Home:
    """One user's set-up: the ledger home directory and the database it uses."""

    path: Path
    database_url: str
    tmp_path: Path

    def write(self, name: str, content: str | bytes) -> Path:
        target = self.tmp_path / name
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
        return target

    def execute(self, *statements: str, **params: Any) -> None:
        """Run SQL on the ledger's database behind the CLI's back (to tamper with it)."""
        engine = create_engine(self.database_url)
        try:
            with engine.begin() as connection:
                for statement in statements:
                    connection.execute(text(statement), params)
        finally:
            engine.dispose()

    def scalar(self, statement: str, **params: Any) -> Any:
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as connection:
                return connection.execute(text(statement), params).scalar()
        finally:
            engine.dispose()


def cli_environment(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Home:
    """Point the CLI at a home in `tmp_path` and at `database_url` (migrated, empty)."""
    path = tmp_path / "home"
    monkeypatch.setenv("CONSENT_LEDGER_HOME", str(path))
    monkeypatch.setenv("CONSENT_LEDGER_DATABASE_URL", database_url)
    monkeypatch.delenv("CONSENT_LEDGER_KEY_PASSPHRASE", raising=False)
    return Home(path=path, database_url=database_url, tmp_path=tmp_path)
