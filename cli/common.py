"""What every command shares: consoles, error handling, opening the ledger, JSON output."""

from __future__ import annotations

import base64
import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import orjson
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from ledger.errors import InvalidInput, LedgerError, VerificationError
from ledger.service import ConsentLedger
from ledger.settings import Settings

# Markup is off: subject ids, categories and notices are user text, and a
# `[/x]` in them must print as itself. Styles come from `styled()`.
console = Console(highlight=False, soft_wrap=True, markup=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def styled(text: str, style: str) -> Text:
    return Text(text, style=style)


JSON_OPTION = typer.Option("--json", help="Print machine-readable JSON instead of tables.")

P = ParamSpec("P")
R = TypeVar("R")

EXIT_FAILURE = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_FAILURE) -> typer.Exit:
    err_console.print(styled("error:", "red"), message)
    return typer.Exit(code)


def guarded(function: Callable[P, R]) -> Callable[P, R]:
    """Turn the ledger's errors into one line on stderr and the right exit code."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except VerificationError as exc:
            err_console.print(styled("verification FAILED:", "red"), str(exc))
            raise typer.Exit(EXIT_FAILURE) from None
        except InvalidInput as exc:
            raise fail(str(exc), EXIT_USAGE) from None
        except LedgerError as exc:
            raise fail(str(exc)) from None
        except OSError as exc:
            raise fail(f"{exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}") from None

    return wrapper


def load_settings() -> Settings:
    try:
        return Settings()
    except ValueError as exc:
        raise fail(f"bad settings: {exc}", EXIT_USAGE) from None


@contextmanager
def open_ledger() -> Iterator[ConsentLedger]:
    settings = load_settings()
    ledger = ConsentLedger(settings)
    try:
        # A database made by an older release gains this one's tables first (every
        # migration only adds), instead of failing on the first missing table.
        ledger.upgrade_if_behind()
        yield ledger
    finally:
        ledger.close()


def _default(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"cannot encode {type(value).__name__}")


def print_json(value: Any) -> None:
    sys.stdout.write(
        orjson.dumps(value, default=_default, option=orjson.OPT_INDENT_2).decode() + "\n"
    )


def progress_bar() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )
